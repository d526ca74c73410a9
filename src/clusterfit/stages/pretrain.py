"""Stage 1: N_pre, the network whose features are clustered (paper §3.2, §4).

Made by training a proxy objective here (supervised with label noise, weak labels, RotNet, Jigsaw),
or taken as it is: a model's shipped pre-trained weights, or a checkpoint file. Writes
``pretrain/checkpoint.pt`` (self-describing: ``model_args`` inside), ``log.jsonl``, ``meta.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from clusterfit.artifacts import Stage
from clusterfit.config import RunConfig
from clusterfit.data import channel_stats
from clusterfit.errors import ClusterFitError
from clusterfit.models import Net, create_model, load_model, save_checkpoint
from clusterfit.pretext import Objective, get_objective
from clusterfit.stages.context import Context, finish, start
from clusterfit.train.engine import CHECKPOINT, Trainer

NAME = "pretrain"


def stage(ctx: Context) -> Stage:
    """The pretrain stage's folder and fingerprint (its config, the seed and the data)."""
    cfg = ctx.cfg
    config = {"pretrain": asdict(cfg.pretrain), "seed": cfg.seed}
    return Stage(ctx.run_dir, NAME, config, {"data": ctx.data().fingerprint})


def objective_for(cfg: RunConfig, num_classes: int | None, n_items: int) -> Objective:
    """The proxy objective named by ``pretrain.objective``."""
    p = cfg.pretrain
    if p.objective == "supervised":
        return get_objective("supervised", label_noise=p.label_noise, num_classes=num_classes)
    if p.objective == "weak":
        return get_objective(
            "weak", path=p.weak_labels, mode=p.weak_mode, n_items=n_items, num_classes=num_classes
        )
    if p.objective == "jigsaw":
        return get_objective("jigsaw", num_permutations=p.jigsaw_permutations)
    return get_objective(p.objective)


def build_untrained(cfg: RunConfig, head_sizes: list[int], patches: int, ctx: Context) -> Net:
    """A freshly initialised network of ``pretrain.arch`` for D_cf's images, seeded."""
    data = ctx.data()
    mean, std = channel_stats(data.images)
    torch.manual_seed(cfg.seed)
    return create_model(
        cfg.pretrain.arch,
        head_sizes,
        in_chans=data.images.shape[1],
        patches=patches,
        mean=mean,
        std=std,
        **cfg.pretrain.arch_kwargs,
    )


def run(ctx: Context) -> dict[str, Any]:
    """Make N_pre (or skip: done already). Returns the stage's meta."""
    cfg, st = ctx.cfg, stage(ctx)
    if st.is_complete():
        ctx.say(f"pretrain: up to date, skipped ({st.dir})")
        return st.meta() or {}
    p = cfg.pretrain
    data = ctx.data()
    if p.objective in ("pretrained", "checkpoint"):
        if p.objective == "pretrained":
            net = create_model(p.arch, [], pretrained=True, **p.arch_kwargs)
        else:
            net = load_model(p.checkpoint)
        start(st)
        save_checkpoint(st.dir / CHECKPOINT, net, config=asdict(cfg))
        ctx.say(f"pretrain: N_pre = {p.objective} {p.checkpoint or p.arch}, nothing to train")
        return finish(st, {"objective": p.objective, "trained": False})

    num_classes = data.num_classes if data.has_labels else None
    objective = objective_for(cfg, num_classes, len(data))
    if objective.uses_labels and not data.has_labels:
        raise ClusterFitError(
            f"pretrain.objective={p.objective} needs labels, but {data.source} has none: "
            "use pretrain.objective=rotnet or jigsaw, or a labelled dataset"
        )
    targets = objective.item_targets(data.labels, cfg.seed)
    net = build_untrained(cfg, objective.head_sizes(num_classes), objective.patches, ctx)
    resuming = start(st)
    ctx.say(
        f"pretrain: {'resuming' if resuming else 'training'} N_pre ({p.objective}, {p.arch}) "
        f"on {len(data)} images for {p.train.epochs} epochs"
    )
    log = Trainer(
        net,
        data,
        targets,
        p.train,
        st.dir,
        make_batch=objective.make_batch,
        loss_fn=objective.loss,
        seed=cfg.seed,
        device=ctx.device,
        progress=ctx.progress,
        desc="pretrain",
        checkpoint_extra={"config": asdict(cfg)},
    ).fit()
    summary = {"objective": p.objective, "trained": True, **_last(log)}
    if p.objective == "supervised":
        summary["label_noise"] = p.label_noise
    return finish(st, summary)


def _last(log: list[dict[str, Any]]) -> dict[str, Any]:
    last = dict(log[-1]) if log else {}
    out = {f"final_{k}": v for k, v in last.items() if k not in ("epoch", "seconds", "lr")}
    out["epochs"] = len(log)
    out["train_seconds"] = round(sum(r["seconds"] for r in log), 2)
    return out
