"""Supervised N_pre training with synthetic uniform label noise (ClusterFit §4.1, Fig. 3).

The paper's control experiment trains N_pre on ImageNet-1K labels of which a fraction ``p`` has
been replaced by a *different* class drawn uniformly at random, then shows that ClusterFit's N_cf
recovers much of the transfer accuracy lost to the noise.
"""

from __future__ import annotations

import numpy as np

from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.pretext.base import Objective, register_objective

__all__ = ["SupervisedObjective", "inject_label_noise"]


def inject_label_noise(labels: np.ndarray, p: float, num_classes: int, seed: int) -> np.ndarray:
    """Replace a fraction ``p`` of the labels by a uniformly drawn *other* class (§4.1).

    Exactly ``round(p * N)`` items are flipped (Python's ``round``: halves go to the even
    integer). They are the first ``round(p * N)`` entries of a permutation of ``range(N)`` drawn
    from ``numpy.random.default_rng(seed)``; each gets ``(y + s) mod num_classes`` with ``s``
    uniform in ``1 .. num_classes - 1``, i.e. a class uniform over the ``num_classes - 1`` classes
    other than its own, never the original one.

    Args:
        labels: integer array, N, values in ``[0, num_classes)``.
        p: noise rate in [0, 1].
        num_classes: number of classes K (at least 2 when any label is flipped).
        seed: fixes which items are flipped and to what.

    Returns:
        A new int64 array, N; ``labels`` is not modified.

    Raises:
        ClusterFitError: a label is -1 (unknown) or outside ``[0, num_classes)``, or ``p`` is not
            in [0, 1], or fewer than 2 classes with ``p > 0``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ClusterFitError(
            f"labels must be a 1-D integer array, got shape {labels.shape} of {labels.dtype}"
        )
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"label_noise must be a fraction in [0, 1], got {p}")
    _check_labels(labels, num_classes)
    out = labels.astype(np.int64, copy=True)
    n = len(out)
    k = round(float(p) * n)
    if k == 0:
        return out
    if num_classes < 2:
        raise ConfigError(
            f"label noise needs at least 2 classes to replace a label by another; got "
            f"num_classes={num_classes}"
        )
    rng = np.random.default_rng(seed)
    flip = rng.permutation(n)[:k]
    shift = rng.integers(1, num_classes, size=k)
    out[flip] = (out[flip] + shift) % num_classes
    return out


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    unknown = int(np.count_nonzero(labels == -1))
    if unknown:
        raise ClusterFitError(
            f"the supervised objective needs a label for every item, but {unknown} of "
            f"{len(labels)} items have label -1 (unknown); use a labelled dataset, or a "
            "self-supervised objective ('rotnet', 'jigsaw')"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ClusterFitError(
            f"label {int(bad)} is outside [0, {num_classes}); set num_classes to the dataset's "
            "number of classes"
        )


@register_objective("supervised")
class SupervisedObjective(Objective):
    """Cross-entropy on the dataset's labels, a fraction ``label_noise`` of them made wrong (§4.1).

    Args:
        label_noise: fraction p of labels replaced by a uniformly drawn other class, fixed for the
            whole training by the seed given to :meth:`item_targets` (see
            :func:`inject_label_noise`).
        num_classes: number of classes K. When None, :meth:`head_sizes` takes the number it is
            given and :meth:`item_targets` takes it from there, else ``max(label) + 1``.

    One head of size K; per-item target: the (noisy) label, int64.
    """

    uses_labels = True
    distillable = True

    def __init__(self, label_noise: float = 0.0, num_classes: int | None = None) -> None:
        if not 0.0 <= float(label_noise) <= 1.0:
            raise ConfigError(f"label_noise must be a fraction in [0, 1], got {label_noise}")
        if num_classes is not None and int(num_classes) < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.label_noise = float(label_noise)
        self.num_classes = None if num_classes is None else int(num_classes)
        self._fixed_classes = self.num_classes
        self._config = {"label_noise": self.label_noise, "num_classes": self.num_classes}

    def head_sizes(self, num_classes: int | None) -> list[int]:
        """``[K]``; the dataset's ``num_classes`` must agree with the constructor's if both set."""
        k = _resolve_classes(self._fixed_classes, num_classes, self.name)
        self.num_classes = k
        return [k]

    def item_targets(self, labels: np.ndarray, seed: int) -> list[np.ndarray]:
        """``[noisy labels]``: int64, N (:func:`inject_label_noise` with ``label_noise``)."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ClusterFitError(
                f"labels must be a 1-D integer array, got shape {labels.shape} of {labels.dtype}"
            )
        _check_labels(labels, self.num_classes if self.num_classes is not None else 1 << 62)
        k = self.num_classes if self.num_classes is not None else int(labels.max(initial=0)) + 1
        return [inject_label_noise(labels, self.label_noise, k, seed)]


def _resolve_classes(own: int | None, given: int | None, who: str) -> int:
    if given is not None and given > 0:
        if own is not None and own != given:
            raise ConfigError(
                f"objective {who!r} was built with num_classes={own} but the dataset has "
                f"{given} classes; drop num_classes or make them agree"
            )
        return int(given)
    if own is None:
        raise ConfigError(
            f"objective {who!r} needs the number of classes: the dataset has no class names; "
            "pass num_classes"
        )
    return own
