"""Stage 4: N_cf, trained from scratch to predict the cluster ids (paper §3.1).

By default N_cf has N_pre's architecture (``fit.arch`` may name another) and N_pre's training
recipe (each ``fit.train`` field that is set overrides it). The head size is the number of clusters
read from the cluster stage, never typed twice. Writes ``fit/checkpoint.pt``, ``log.jsonl``,
``meta.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit.artifacts import Stage
from clusterfit.config import resolved_fit_train
from clusterfit.data import channel_stats
from clusterfit.models import Net, build_from_args, create_for_data, load_checkpoint
from clusterfit.models.registry import MODULE_ARCH
from clusterfit.stages import cluster, graph
from clusterfit.stages.context import Context, finish, start, up_to_date
from clusterfit.stages.pretrain import log_summary
from clusterfit.train.engine import Trainer

NAME = "fit"


def architecture(ctx: Context) -> tuple[str, dict[str, Any]]:
    """N_cf's (architecture name, keyword arguments): ``fit.arch`` when set, else N_pre's (for a
    checkpoint N_pre, the architecture recorded in the checkpoint)."""
    f, p = ctx.cfg.fit, ctx.cfg.pretrain
    if f.arch is None and p.objective == "module" and ctx.n_pre is not None:
        return MODULE_ARCH, dict(ctx.n_pre.model_args["arch_kwargs"])
    if f.arch is None and p.objective == "checkpoint":
        args = load_checkpoint(Path(p.checkpoint or ""))["model_args"]
        kwargs = args["arch_kwargs"] if f.arch_kwargs is None else f.arch_kwargs
        return str(args["arch"]), dict(kwargs)
    if f.arch is None:
        return p.arch, dict(p.arch_kwargs if f.arch_kwargs is None else f.arch_kwargs)
    return f.arch, dict(f.arch_kwargs or {})


def _new_ncf(ctx: Context, heads: list[int]) -> Net:
    """N_cf, freshly initialised: N_pre's architecture (a user module is rebuilt by the
    ``module_factory`` given to ``run_pipeline``) or ``fit.arch``."""
    arch, kwargs = architecture(ctx)
    data = ctx.data()
    if arch != MODULE_ARCH:
        return create_for_data(arch, kwargs, heads, data, ctx.cfg.seed + 1)
    assert ctx.n_pre is not None
    mean, std = channel_stats(data.images)
    args = {**ctx.n_pre.model_args, "head_sizes": heads, "patches": 1, "mean": mean, "std": std}
    args.pop("input_size", None)  # N_cf sees the data at its own size (pretrain.input_size)
    torch.manual_seed(ctx.cfg.seed + 1)
    return build_from_args(args, ctx.module_factory)


@graph.memo("fit")
def stage(ctx: Context) -> Stage:
    """The fit stage: N_cf's resolved architecture and recipe, the seed, clusterings and data."""
    arch, kwargs = architecture(ctx)
    config = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "train": asdict(resolved_fit_train(ctx.cfg)),
        "seed": ctx.cfg.seed,
    }
    inputs = {
        f"clusters{task}": cluster.stage(ctx, task).fingerprint
        for task in range(len(ctx.pretrain_configs))
    }
    inputs["data"] = ctx.data().fingerprint
    return Stage(ctx.run_dir, graph.folder("fit", variant=ctx.variant), config, inputs)


def run(ctx: Context) -> dict[str, Any]:
    """Train N_cf on the cluster ids (or skip: done already). Returns the stage's meta.

    With several N_pre (multi-task ClusterFit, App. E) N_cf has one head per clustering and the
    cross-entropy losses of the heads are summed.
    """
    cfg, st = ctx.cfg, stage(ctx)
    if (meta := up_to_date(ctx, st)) is not None:
        return meta
    targets, heads, clusterings = [], [], []
    for task in range(len(ctx.pretrain_configs)):
        clusters = cluster.stage(ctx, task)
        clusters.require("cluster")
        clusterings.append(clusters.fingerprint)
        targets.append(np.load(clusters.dir / "assignments.npy"))
        heads.append(int(np.load(clusters.dir / "centroids.npy", mmap_mode="r").shape[0]))
    data = ctx.data()
    arch, _ = architecture(ctx)
    net = _new_ncf(ctx, heads)
    train_cfg = resolved_fit_train(cfg)
    resuming = start(st)
    ctx.say(
        f"{st.name}: {'resuming' if resuming else 'training'} N_cf ({arch}, from scratch) on the "
        f"K={'+'.join(map(str, heads))} cluster ids of {len(data)} images "
        f"for {train_cfg.epochs} epochs"
    )
    log = Trainer(
        net,
        data,
        targets,
        train_cfg,
        st.dir,
        seed=cfg.seed + 1,
        device=ctx.device,
        progress=ctx.progress,
        desc="fit",
        # the facts N_cf stands on travel with it: the clusterings it was trained on
        checkpoint_extra={"config": asdict(cfg), "clusters": clusterings, "k": heads},
    ).fit()
    return finish(st, {"k": heads[0], "heads": heads, "clusters": clusterings, **log_summary(log)})
