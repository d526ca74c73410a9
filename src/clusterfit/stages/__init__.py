"""The pipeline: each stage reads earlier stages' artifacts and writes its own folder.

``pretrain -> extract -> cluster -> fit -> probe``, each a module with ``stage(ctx)`` (its folder
and fingerprint) and ``run(ctx)`` (do the work unless it is up to date; return the stage's meta).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clusterfit.config import RunConfig
from clusterfit.stages import cluster, extract, fit, pretrain, probe
from clusterfit.stages.context import Context

STAGES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "pretrain": pretrain.run,
    "extract": extract.run,
    "cluster": cluster.run,
    "fit": fit.run,
    "probe": probe.run,
}


def run_pipeline(cfg: RunConfig, only: str | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage in order (or ``only`` one); returns each stage's meta by name."""
    ctx = Context.create(cfg)
    names = [only] if only else list(STAGES)
    return {name: STAGES[name](ctx) for name in names}


__all__ = ["STAGES", "Context", "run_pipeline"]
