"""The ``Objective`` contract for N_pre training, and the registry of objectives by name.

ClusterFit (Yan et al., CVPR 2020) starts from a network N_pre trained on a *proxy* objective
(§3.2, §4): labels with synthetic noise (§4.1), weak labels such as hashtags or video tags
(§4.1, App. B), or a self-supervised pretext task such as RotNet or Jigsaw (§4.2, App. C). The
training engine treats every one of them alike; per batch it

1. augments uint8 images into ``x``: float ``B x C x H x W`` in [0, 1];
2. calls ``inputs, targets = objective.make_batch(x, batch_targets, generator)``, where
   ``batch_targets[h]`` is the slice for this batch of ``objective.item_targets(labels, seed)[h]``;
3. runs ``logits = net(inputs)`` (one ``B' x head_size`` tensor per head);
4. minimises ``objective.loss(logits, targets)``.

An objective is looked up by name with :func:`get_objective` (``"supervised"``, ``"weak"``,
``"rotnet"``, ``"jigsaw"``); :func:`list_objectives` lists the names.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError, ConfigError

__all__ = [
    "Objective",
    "get_objective",
    "get_objective_class",
    "list_objectives",
    "register_objective",
]


class Objective(ABC):
    """One N_pre training objective (ClusterFit §3.2, §4).

    Class attributes (read by the engine and by the later stages):

    * ``name``: the registry name.
    * ``patches``: number of patches per item in the network input (1 = whole images; Jigsaw: 9,
      the network gets ``B x 9 x C x p x p``).
    * ``uses_labels``: :meth:`item_targets` reads the dataset's labels (they must be known).
    * ``distillable``: the network's outputs are a distribution over the target classes, so the
      network can be a distillation teacher (App. A); RotNet / Jigsaw outputs are not (App. D).
    * ``multilabel``: the per-head targets are multi-hot ``B x K`` (uint8) rather than class
      indices ``B`` (int64); :meth:`loss` knows which.
    * ``not_distillable_reason``: why not, when ``distillable`` is False.
    """

    name: ClassVar[str] = ""
    patches: ClassVar[int] = 1
    uses_labels: ClassVar[bool] = False
    distillable: ClassVar[bool] = False
    multilabel: ClassVar[bool] = False
    not_distillable_reason: ClassVar[str] = ""

    @abstractmethod
    def head_sizes(self, num_classes: int | None) -> list[int]:
        """Output size of each head of the network, given the dataset's number of classes."""

    def item_targets(self, labels: np.ndarray, seed: int) -> list[np.ndarray]:
        """Per-item targets per head, fixed for the whole training.

        Args:
            labels: int64 array, N (the dataset's labels; -1 where unknown).
            seed: fixes every random choice (label noise, weak-label sampling).

        Returns:
            One array per head with N rows (row i = item i), or ``[]`` when the targets are made
            per batch by :meth:`make_batch` (RotNet, Jigsaw). This default returns ``[]``.
        """
        return []

    def make_batch(
        self, x: torch.Tensor, targets: Sequence[torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Network input and per-head targets for one batch.

        Args:
            x: float ``B x C x H x W`` in [0, 1], already augmented (or video clips
                ``B x C x T x H x W``, paper §4.1.2: labels and weak labels are per video).
            targets: per head, the batch's rows of :meth:`item_targets` (each B, int64, or
                ``B x K`` multi-hot for multi-label objectives); empty for RotNet / Jigsaw.
            generator: the source of any randomness (Jigsaw's crops and permutations).

        Returns:
            ``(inputs, targets)``. This default passes both through unchanged.
        """
        check_images(x, self.name, clips=True)
        targets = list(targets)
        for t in targets:
            if t.shape[0] != x.shape[0]:
                raise ClusterFitError(
                    f"objective {self.name!r}: a target has {t.shape[0]} rows but the batch has "
                    f"{x.shape[0]} images; slice item_targets with the batch's item indices"
                )
        return x, targets

    def loss(self, logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Training loss: cross-entropy of each head against its targets, summed over heads.

        Args:
            logits: per head, ``B x head_size``.
            targets: per head, class indices ``B`` (int64).

        Returns:
            A scalar tensor (each head's loss is a mean over the batch).
        """
        _check_heads(self.name, logits, targets)
        total = logits[0].new_zeros(())
        for out, tgt in zip(logits, targets, strict=True):
            total = total + F.cross_entropy(out, tgt.to(device=out.device, dtype=torch.long))
        return total

    def config(self) -> dict[str, Any]:
        """The objective's name and constructor arguments (JSON-able), for ``meta.json``."""
        return {"name": self.name, **getattr(self, "_config", {})}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_config", {}).items())
        return f"{type(self).__name__}({args})"


def check_images(x: torch.Tensor, who: str, clips: bool = False) -> None:
    """Raise unless ``x`` is a float ``B x C x H x W`` batch (what the engine hands over), or
    with ``clips`` also a ``B x C x T x H x W`` batch of video clips."""
    ok_dims = (4, 5) if clips else (4,)
    if not isinstance(x, torch.Tensor) or x.ndim not in ok_dims or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ClusterFitError(
            f"objective {who!r} expects float images B x C x H x W in [0, 1], got {shape}"
            + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else "")
            + "; convert uint8 images with images.float() / 255"
        )


def _check_heads(who: str, logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
    if len(logits) == 0 or len(logits) != len(targets):
        raise ClusterFitError(
            f"objective {who!r}: {len(logits)} heads of logits but {len(targets)} targets; the "
            "network's head_sizes must come from objective.head_sizes()"
        )


_REGISTRY: dict[str, type[Objective]] = {}

_O = TypeVar("_O", bound=type[Objective])


def register_objective(name: str) -> Callable[[_O], _O]:
    """Class decorator: make an :class:`Objective` subclass available as ``get_objective(name)``."""

    def deco(cls: _O) -> _O:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_objectives() -> list[str]:
    """Names accepted by :func:`get_objective`, sorted."""
    return sorted(_REGISTRY)


def get_objective_class(name: str) -> type[Objective]:
    """The :class:`Objective` subclass registered as ``name``; ConfigError if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown N_pre objective {name!r}; choose one of {list_objectives()}"
        ) from None


def get_objective(name: str, **kwargs: Any) -> Objective:
    """Build the objective registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        ConfigError: unknown name, or an argument the objective does not take.
    """
    cls = get_objective_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self",)]
        raise ConfigError(
            f"objective {name!r}: bad arguments {sorted(kwargs)} ({e}); it takes {params}"
        ) from None
    return cls(**kwargs)
