"""The paper's baselines, trained beside N_cf on the same data (paper §3.2, App. A).

- ``N_pre_2x``: N_pre's recipe trained for as many epochs as N_pre and N_cf together, so that
  ClusterFit's extra training is not what makes N_cf better.
- ``distill``: a network of N_pre's architecture trained from scratch on N_pre's temperature-
  softened outputs plus the (noisy) labels, weighted alpha / 1 - alpha (T = 20, alpha = 0.75 by
  default; Hinton et al. 2015). Not defined for RotNet / Jigsaw teachers (App. D).

Folders ``baseline-pre2x/`` and ``baseline-distill/``, each like ``pretrain/``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from clusterfit.artifacts import Stage
from clusterfit.config import pretrain_settings, resolved_fit_train
from clusterfit.stages import graph, pretrain
from clusterfit.stages.context import Context, up_to_date
from clusterfit.train.distill import distillation_loss
from clusterfit.train.engine import CHECKPOINT

MODELS = {"pre2x": "N_pre_2x", "distill": "distill"}


def enabled(ctx: Context) -> list[str]:
    """The baselines this run trains, by key (``pre2x``, ``distill``)."""
    b = ctx.cfg.baselines
    return [key for key, on in (("pre2x", b.pre2x), ("distill", b.distill)) if on]


@graph.memo("baselines")
def stage(ctx: Context, key: str) -> Stage:
    """The folder and fingerprint of one baseline."""
    cfg = ctx.cfg
    config: dict[str, Any] = {
        "pretrain": pretrain_settings(cfg.pretrain),
        "seed": cfg.seed,
        "kind": key,
    }
    inputs = {"data": ctx.data().fingerprint}
    if key == "pre2x":
        config["epochs"] = _pre2x_epochs(ctx)
    else:
        config["temperature"] = cfg.baselines.temperature
        config["alpha"] = cfg.baselines.alpha
        inputs["teacher"] = pretrain.stage(ctx).fingerprint
    return Stage(ctx.run_dir, graph.folder("baselines", key=key), config, inputs)


def _pre2x_epochs(ctx: Context) -> int:
    return ctx.cfg.pretrain.train.epochs + resolved_fit_train(ctx.cfg).epochs


def _distill_loss(
    logits: list[torch.Tensor],
    targets: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    return distillation_loss(
        logits[0], teacher_logits[0], targets[0], temperature=temperature, alpha=alpha
    )


def run(ctx: Context) -> dict[str, Any]:
    """Train each enabled baseline (or skip: done already); returns ``{key: meta}``."""
    metas = {}
    p = ctx.cfg.pretrain
    for key in enabled(ctx):
        st = stage(ctx, key)
        if (meta := up_to_date(ctx, st)) is not None:
            metas[key] = meta
            continue
        if key == "pre2x":
            recipe = dataclasses.replace(p.train, epochs=_pre2x_epochs(ctx))
            metas[key] = pretrain.train_objective(ctx, st, p, recipe, desc=st.name)
            continue
        teacher_stage = pretrain.stage(ctx)
        teacher_stage.require("pretrain")
        teacher = ctx.load_model(teacher_stage.dir / CHECKPOINT)
        loss = functools.partial(
            _distill_loss,
            temperature=ctx.cfg.baselines.temperature,
            alpha=ctx.cfg.baselines.alpha,
        )
        metas[key] = pretrain.train_objective(
            ctx, st, p, p.train, desc=st.name, teacher=teacher, loss_fn=loss
        )
    return metas
