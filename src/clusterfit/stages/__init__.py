"""The pipeline: each stage reads earlier stages' artifacts and writes its own folder.

``pretrain -> extract -> cluster -> fit -> (baselines) -> probe``, each a module with ``stage(ctx)``
(its folder and fingerprint) and ``run(ctx)`` (do the work unless it is up to date; return the
stage's meta). In a K sweep (``sweep_k``) cluster, fit and probe run once per K.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clusterfit.config import RunConfig
from clusterfit.stages import baselines, cluster, extract, fit, pretrain, probe
from clusterfit.stages.context import Context

STAGES: dict[str, Callable[[Context], Any]] = {
    "pretrain": pretrain.run,
    "extract": extract.run,
    "baselines": baselines.run,
    "cluster": cluster.run,
    "fit": fit.run,
    "probe": probe.run,
}
PER_K = ("cluster", "fit", "probe")


def run_pipeline(cfg: RunConfig, only: str | None = None) -> dict[str, Any]:
    """Run every stage in order (or ``only`` one); returns each stage's meta by folder name."""
    ctx = Context.create(cfg)
    ctx.data()  # loaded once, shared by every K of a sweep
    variants = [ctx.with_k(k) for k in cfg.sweep_k] if cfg.sweep_k else [ctx]
    metas: dict[str, Any] = {}
    for name in [n for n in STAGES if n not in PER_K]:
        if only in (None, name):
            metas[name] = STAGES[name](ctx)
    for variant in variants:
        for name in PER_K:
            if only in (None, name):
                metas[variant.folder(name)] = STAGES[name](variant)
    return metas


def probe_folders(cfg: RunConfig) -> list[str]:
    """The probe folders of a run: ``probe``, or ``probe-k<K>`` for each K of a sweep."""
    return [f"probe-k{k}" for k in cfg.sweep_k] if cfg.sweep_k else ["probe"]


__all__ = ["PER_K", "STAGES", "Context", "probe_folders", "run_pipeline"]
