"""Stage 4: N_cf, trained from scratch to predict the cluster ids (paper §3.1).

By default N_cf has N_pre's architecture (``fit.arch`` may name another) and N_pre's training
recipe (each ``fit.train`` field that is set overrides it). The head size is the number of clusters
read from the cluster stage, never typed twice. Writes ``fit/checkpoint.pt``, ``log.jsonl``,
``meta.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from clusterfit.artifacts import Stage
from clusterfit.config import resolved_fit_train
from clusterfit.data import channel_stats
from clusterfit.models import create_model
from clusterfit.stages import cluster
from clusterfit.stages.context import Context, finish, start
from clusterfit.train.engine import Trainer

NAME = "fit"


def _arch(ctx: Context) -> tuple[str, dict[str, Any]]:
    f, p = ctx.cfg.fit, ctx.cfg.pretrain
    if f.arch is None:
        return p.arch, dict(p.arch_kwargs if f.arch_kwargs is None else f.arch_kwargs)
    return f.arch, dict(f.arch_kwargs or {})


def stage(ctx: Context) -> Stage:
    """The fit stage: N_cf's resolved architecture and recipe, the seed, clusters and data."""
    arch, kwargs = _arch(ctx)
    config = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "train": asdict(resolved_fit_train(ctx.cfg)),
        "seed": ctx.cfg.seed,
    }
    inputs = {"clusters": cluster.stage(ctx).fingerprint, "data": ctx.data().fingerprint}
    return Stage(ctx.run_dir, NAME, config, inputs)


def run(ctx: Context) -> dict[str, Any]:
    """Train N_cf on the cluster ids (or skip: done already). Returns the stage's meta."""
    cfg, st = ctx.cfg, stage(ctx)
    if st.is_complete():
        ctx.say(f"fit: up to date, skipped ({st.dir})")
        return st.meta() or {}
    clusters = cluster.stage(ctx)
    clusters.require("cluster")
    assignments = np.load(clusters.dir / "assignments.npy")
    k = int(np.load(clusters.dir / "centroids.npy", mmap_mode="r").shape[0])
    data = ctx.data()
    arch, kwargs = _arch(ctx)
    mean, std = channel_stats(data.images)
    torch.manual_seed(cfg.seed + 1)
    net = create_model(arch, [k], in_chans=data.images.shape[1], mean=mean, std=std, **kwargs)
    train_cfg = resolved_fit_train(cfg)
    resuming = start(st)
    ctx.say(
        f"fit: {'resuming' if resuming else 'training'} N_cf ({arch}, from scratch) on the "
        f"K={k} cluster ids of {len(data)} images for {train_cfg.epochs} epochs"
    )
    log = Trainer(
        net,
        data,
        [assignments],
        train_cfg,
        st.dir,
        seed=cfg.seed + 1,
        device=ctx.device,
        progress=ctx.progress,
        desc="fit",
        checkpoint_extra={"config": asdict(cfg)},
    ).fit()
    last = log[-1] if log else {}
    summary = {
        "k": k,
        "epochs": len(log),
        "final_loss": last.get("loss"),
        "final_train_acc": last.get("train_acc"),
        "train_seconds": round(sum(r["seconds"] for r in log), 2),
    }
    return finish(st, summary)
