"""The run graph: the one place that names the stages' folders and computes their fingerprints.

``pretrain -> extract -> cluster -> fit -> (baselines) -> probe`` (Yan et al., CVPR 2020, §3-4):
each stage module declares its config slice and inputs in ``stage(ctx, ...)``; this module names
its folder (:func:`folder`) and keeps each :class:`~clusterfit.artifacts.Stage` (hence its
fingerprint, which hashes those of all its inputs) computed once per run (:func:`memo`). The
networks a probe looks at are :class:`Probed` records, so no code parses a model's name back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from clusterfit.artifacts import Stage

if TYPE_CHECKING:
    from clusterfit.stages.context import Context

#: Stage kind -> folder name.
FOLDERS = {
    "pretrain": "pretrain",
    "extract": "features",
    "cluster": "clusters",
    "fit": "fit",
    "baselines": "baseline",
    "probe": "probe",
}
#: Kinds that run once per K of a sweep (folders suffixed ``-k<K>``).
PER_K = ("cluster", "fit", "probe")

F = TypeVar("F", bound=Callable[..., Stage])


def folder(kind: str, *, task: int = 0, key: str | None = None, variant: str = "") -> str:
    """The folder of a stage: ``features``, ``pretrain-2`` (the 2nd N_pre of a multi-task run),
    ``baseline-pre2x``, ``clusters-2-k50`` (2nd N_pre's clustering at K = 50 of a sweep)."""
    name = FOLDERS[kind]
    if key:
        name += f"-{key}"
    if task:
        name += f"-{task + 1}"
    if variant and kind in PER_K:
        name += f"-{variant}"
    return name


def memo(kind: str) -> Callable[[F], F]:
    """Decorator for ``stage(ctx, *args)``: the Stage is built once per run and arguments (and
    once per K for the kinds in :data:`PER_K`), then served from ``ctx.stages``."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(ctx: Context, *args: Any) -> Stage:
            bound = sig.bind(ctx, *args)
            bound.apply_defaults()
            params = tuple(bound.arguments.values())[1:]
            key = (kind, params, ctx.variant if kind in PER_K else "")
            cached = ctx.stages.get(key)
            if cached is None:
                cached = ctx.stages[key] = fn(ctx, *args)
            return cached

        return wrapper  # type: ignore[return-value]

    return deco


@dataclass(frozen=True)
class Probed:
    """A network the probe stage looks at: its name in results, what made it, and that stage.

    kind: ``random`` (N_pre's architecture, freshly initialised), ``pretrain`` (the ``task``-th
    N_pre), ``fit`` (N_cf) or ``baselines`` (``key``: ``pre2x`` or ``distill``).
    """

    name: str
    kind: str
    stage: Stage
    task: int = 0
    key: str | None = None

    @property
    def command(self) -> str:
        """The command that makes this network (``clusterfit pretrain`` for the random floor's
        architecture too)."""
        return "pretrain" if self.kind == "random" else self.kind
