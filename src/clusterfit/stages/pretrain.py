"""Stage 1: N_pre, the network whose features are clustered (paper §3.2, §4).

Made by training a proxy objective here (supervised with label noise, weak labels, RotNet, Jigsaw),
or taken as it is: a model's shipped pre-trained weights, or a checkpoint file. Writes
``pretrain/checkpoint.pt`` (self-describing: ``model_args`` inside), ``log.jsonl``, ``meta.json``.
Multi-task ClusterFit (App. E) adds more N_pre: ``pretrain-2/``, ``pretrain-3/``, ...
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from clusterfit.artifacts import Stage
from clusterfit.config import PretrainConfig, TrainConfig, pretrain_settings
from clusterfit.errors import ClusterFitError
from clusterfit.models import Net, create_for_data, create_model, save_checkpoint
from clusterfit.pretext import Objective, get_objective
from clusterfit.stages import graph
from clusterfit.stages.context import Context, each_task, finish, start, up_to_date
from clusterfit.train.engine import CHECKPOINT, Trainer

NAME = "pretrain"


def folder(task: int) -> str:
    """``pretrain`` for N_pre, ``pretrain-<n>`` for the n-th N_pre of a multi-task run."""
    return graph.folder("pretrain", task=task)


def model_name(task: int) -> str:
    """How results name the ``task``-th N_pre: ``N_pre``, ``N_pre_2``, ..."""
    return "N_pre" if task == 0 else f"N_pre_{task + 1}"


@graph.memo("pretrain")
def stage(ctx: Context, task: int = 0) -> Stage:
    """The folder and fingerprint of the ``task``-th N_pre (its recipe, the seed and the data;
    for a given network, a digest of its weights or of its checkpoint file)."""
    p = ctx.pretrain_configs[task]
    config: dict[str, Any] = {"pretrain": pretrain_settings(p), "seed": ctx.cfg.seed}
    if p.objective == "module":
        if ctx.n_pre is None or task != 0:
            raise ClusterFitError(
                "pretrain.objective=module means N_pre is the network passed to "
                "run_pipeline(cfg, n_pre=...) from Python; none was passed"
            )
        config["module"] = {
            "model_args": ctx.n_pre.model_args,
            "weights": weights_digest(ctx.n_pre),
        }
    elif p.objective == "checkpoint":
        config["checkpoint_sha256"] = file_digest(Path(p.checkpoint or ""))
    if p.objective == "weak" and p.weak_labels:
        config["weak_labels_sha256"] = file_digest(Path(p.weak_labels), "pretrain.weak_labels")
    return Stage(ctx.run_dir, folder(task), config, {"data": ctx.data().fingerprint})


def weights_digest(net: nn.Module) -> str:
    """sha256 of a network's parameters and buffers, in state_dict order."""
    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path, setting: str = "pretrain.checkpoint") -> str:
    """sha256 of a file's bytes, computed once per process for a given size and mtime (a missing
    file is an error naming ``setting``)."""
    if not path.is_file():
        raise ClusterFitError(f"{setting}: no such file: {path}")
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def objective_for(p: PretrainConfig, num_classes: int | None, n_items: int) -> Objective:
    """The proxy objective that ``p.objective`` names."""
    if p.objective == "supervised":
        return get_objective("supervised", label_noise=p.label_noise, num_classes=num_classes)
    if p.objective == "weak":
        return get_objective(
            "weak", path=p.weak_labels, mode=p.weak_mode, n_items=n_items, num_classes=num_classes
        )
    if p.objective == "jigsaw":
        return get_objective("jigsaw", num_permutations=p.jigsaw_permutations)
    return get_objective(p.objective)


def train_objective(
    ctx: Context,
    st: Stage,
    p: PretrainConfig,
    train_cfg: TrainConfig,
    *,
    desc: str,
    teacher: Net | None = None,
    loss_fn: Any = None,
) -> dict[str, Any]:
    """Train ``p``'s objective from scratch into ``st``'s folder; returns the stage's meta.

    Also the engine of the baselines: N_pre 2x (more epochs) and distillation (a teacher and a
    loss that takes its logits).
    """
    data = ctx.data()
    num_classes = data.num_classes if data.has_labels else None
    if p.objective in ("supervised", "weak") and not data.has_labels:
        raise ClusterFitError(
            f"pretrain.objective={p.objective} needs labels, but {data.source} has none: "
            "use objective rotnet or jigsaw, or a labelled dataset"
        )
    objective = objective_for(p, num_classes, len(data))
    targets = objective.item_targets(data.labels, ctx.cfg.seed)
    net = create_for_data(
        p.arch,
        p.arch_kwargs,
        objective.head_sizes(num_classes),
        data,
        ctx.cfg.seed,
        objective.patches,
    ).set_input_size(p.input_size)
    resuming = start(st)
    ctx.say(
        f"{desc}: {'resuming' if resuming else 'training'} ({p.objective}, {p.arch}) "
        f"on {len(data)} images for {train_cfg.epochs} epochs"
    )
    log = Trainer(
        net,
        data,
        targets,
        train_cfg,
        st.dir,
        make_batch=objective.make_batch,
        loss_fn=loss_fn or objective.loss,
        teacher=teacher,
        seed=ctx.cfg.seed,
        device=ctx.device,
        progress=ctx.progress,
        desc=desc,
        checkpoint_extra={"config": asdict(ctx.cfg)},
    ).fit()
    summary = {"objective": p.objective, "trained": True, **log_summary(log)}
    if p.objective == "supervised":
        summary["label_noise"] = p.label_noise
    return finish(st, summary)


def run_task(ctx: Context, task: int = 0) -> dict[str, Any]:
    """Make the ``task``-th N_pre (or skip: done already). Returns its stage's meta."""
    st, p = stage(ctx, task), ctx.pretrain_configs[task]
    name = folder(task)
    if (meta := up_to_date(ctx, st)) is not None:
        return meta
    if p.objective in ("pretrained", "checkpoint", "module"):
        if p.objective == "pretrained":
            net = create_model(p.arch, [], pretrained=True, weights=p.weights, **p.arch_kwargs)
        elif p.objective == "checkpoint":
            net = ctx.load_model(Path(p.checkpoint or ""))
        else:
            assert ctx.n_pre is not None
            net = ctx.n_pre
        if p.input_size is not None:
            net.set_input_size(p.input_size)
        start(st)
        save_checkpoint(st.dir / CHECKPOINT, net, config=asdict(ctx.cfg))
        what = {"pretrained": p.arch, "checkpoint": p.checkpoint, "module": net.arch}[p.objective]
        ctx.say(f"{name}: N_pre = {p.objective} {what}, nothing to train")
        return finish(st, {"objective": p.objective, "trained": False})
    return train_objective(ctx, st, p, p.train, desc=name)


def run(ctx: Context) -> dict[str, Any]:
    """Make every N_pre of the run; returns the (first) N_pre's meta."""
    return each_task(ctx, run_task)


def log_summary(log: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's figures (``final_loss``, ``final_train_acc``, ...) and the total time."""
    last = dict(log[-1]) if log else {}
    out = {f"final_{k}": v for k, v in last.items() if k not in ("epoch", "seconds", "lr")}
    out["epochs"] = len(log)
    out["train_seconds"] = round(sum(r["seconds"] for r in log), 2)
    return out
