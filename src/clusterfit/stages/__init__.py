"""The pipeline: each stage reads earlier stages' artifacts and writes its own folder.

``pretrain -> extract -> cluster -> fit -> (baselines) -> probe``, each a module with ``stage(ctx)``
(its folder and fingerprint) and ``run(ctx)`` (do the work unless it is up to date; return the
stage's meta). In a K sweep (``sweep_k``) cluster, fit and probe run once per K.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from clusterfit import distributed as dist
from clusterfit.artifacts import RunLock
from clusterfit.config import RunConfig
from clusterfit.errors import ConfigError
from clusterfit.models import Net, from_module
from clusterfit.stages import baselines, cluster, extract, fit, preflight, pretrain, probe, report
from clusterfit.stages.context import REDO_NAMES, Context

STAGES: dict[str, Callable[[Context], Any]] = {
    "pretrain": pretrain.run,
    "extract": extract.run,
    "baselines": baselines.run,
    "cluster": cluster.run,
    "fit": fit.run,
    "probe": probe.run,
}
PER_K = ("cluster", "fit", "probe")


def run_pipeline(
    cfg: RunConfig,
    only: str | None = None,
    *,
    n_pre: nn.Module | None = None,
    module_factory: Callable[[], nn.Module] | None = None,
    redo: Sequence[str] = (),
    wait: bool = True,
) -> dict[str, Any]:
    """Run every stage in order (or ``only`` one); returns each stage's meta by folder name.

    ``n_pre``: use this network as N_pre (any ``nn.Module`` mapping images to a feature map or a
    vector; wrapped by :func:`clusterfit.models.from_module` unless it is a ``Net``), instead of
    making one; ``pretrain.objective`` becomes ``module``. ``module_factory`` (a callable
    returning a fresh, untrained instance of the module) lets N_cf and the random baseline have
    the same architecture; without it set ``fit.arch``.

    ``redo``: stages (``pretrain``, ``extract``, ``cluster``, ``fit``, ``baselines``, ``probe``)
    whose folders are deleted and made again. The run folder is locked for the whole call: a
    second process on the same run waits for it (``wait=False``: refuses with an error).
    """
    bad = sorted(set(redo) - set(REDO_NAMES))
    if bad:
        raise ConfigError(f"--redo {bad[0]}: not a stage; choose from {', '.join(STAGES)}")
    if n_pre is not None:
        if not isinstance(n_pre, Net):
            n_pre = from_module(n_pre)
        cfg = dataclasses.replace(
            cfg, pretrain=dataclasses.replace(cfg.pretrain, objective="module")
        )
    ctx = Context.create(cfg, n_pre=n_pre, module_factory=module_factory, redo=frozenset(redo))
    lock = RunLock(cfg.run_dir, wait=wait, say=ctx.say) if dist.is_main_process() else None
    with lock or contextlib.nullcontext():
        if dist.is_main_process():
            report.record_run(cfg)  # run.json + config.yaml: what the report describes
        ctx.data()  # loaded once, shared by every K of a sweep
        preflight.check(ctx)  # what would fail after training, before the first epoch
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
