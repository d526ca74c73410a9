"""Weak labels: several noisy labels per item (ClusterFit §4.1, App. B).

The paper pre-trains on weakly labelled data: images with hashtags and videos with tags. For the
video datasets each clip carries several labels and training uses *one label drawn at random* per
clip (mode ``"sample"``); mode ``"multilabel"`` instead trains against all of an item's labels at
once, with a multi-hot target and a binary cross-entropy per class.

Weak-label file formats (read by :func:`load_weak_labels`):

* **Text** (``.csv``, ``.tsv``, ``.txt``, anything not ``.json``): one line per item,
  ``<index><sep><labels>`` where ``<sep>`` is a tab (if the line has one) or else the first
  comma, ``<index>`` is the item's position in the dataset (0-based) and ``<labels>`` are
  separated by ``;`` or ``|``. Blank lines and lines starting with ``#`` are skipped, as is a
  header line whose first field is ``index``. Example::

      index,labels
      0,3;7
      1,dog|cat
      2,5

* **JSON** (``.json``): a list with one list of labels per item (``[[3, 7], ["dog", "cat"], [5]]``),
  or an object mapping the index (as a string) to its list (``{"0": [3, 7], "1": ["dog"]}``).

A label is a class index (integer) or a class name, looked up in ``class_names`` (names cannot
contain ``,``, ``;``, ``|`` or tabs in the text format). Every item needs at least one label; a
label repeated for one item counts once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError, ConfigError, DataError
from clusterfit.pretext.base import Objective, _check_heads, register_objective
from clusterfit.pretext.supervised import _resolve_classes

__all__ = ["WeakLabelObjective", "load_weak_labels", "multi_hot", "sample_weak_labels"]

_MODES = ("sample", "multilabel")
_LABEL_SEP = re.compile(r"[;|]")


def load_weak_labels(
    path: str | os.PathLike[str],
    n_items: int | None,
    class_names: Sequence[str] | None = None,
) -> list[list[int]]:
    """Read a weak-label file (format in the module docstring).

    Args:
        path: the ``.json`` or text file.
        n_items: number of items in the dataset; every index in ``[0, n_items)`` must have labels.
            None: taken from the file (length of the JSON list, or largest index + 1).
        class_names: names for label tokens that are not integers; integer labels must then be
            below ``len(class_names)``.

    Returns:
        One list of distinct class indices per item (order of first appearance), ``n_items`` long.

    Raises:
        DataError: missing/unreadable file, malformed line, unknown class name, duplicate,
            out-of-range or missing index, item without labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weak-label file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read weak-label file {str(path)!r}: {e}") from None
    names = {n: i for i, n in enumerate(class_names)} if class_names is not None else None
    parse = _parse_json if path.suffix.lower() == ".json" else _parse_text
    entries = parse(text, path)

    by_index: dict[int, list[int]] = {}
    for index, tokens, where in entries:
        if index in by_index:
            raise DataError(f"{path}: index {index} appears twice ({where})")
        by_index[index] = _to_classes(tokens, names, f"{path} ({where})")
    if n_items is None:
        n_items = max(by_index, default=-1) + 1
    bad = [i for i in by_index if not 0 <= i < n_items]
    if bad:
        raise DataError(
            f"{path}: index {min(bad)} is outside the dataset's {n_items} items "
            "(indices are 0-based positions in the dataset)"
        )
    missing = [i for i in range(n_items) if i not in by_index]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {n_items} items have no weak labels (first: "
            f"{missing[:5]}); every item needs at least one"
        )
    return [by_index[i] for i in range(n_items)]


def _parse_json(text: str, path: Path) -> list[tuple[int, list, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, list):
        items = list(enumerate(data))
    elif isinstance(data, dict):
        items = []
        for k, v in data.items():
            try:
                items.append((int(k), v))
            except ValueError:
                raise DataError(f"{path}: key {k!r} is not an item index") from None
    else:
        raise DataError(f"{path}: expected a JSON list of label lists or an object, got {data!r}")
    out = []
    for i, v in items:
        if not isinstance(v, list):
            raise DataError(f"{path}: item {i}: expected a list of labels, got {v!r}")
        out.append((i, v, f"item {i}"))
    return out


def _parse_text(text: str, path: Path) -> list[tuple[int, list, str]]:
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        head, found, rest = line.partition(sep)
        head = head.strip()
        if head.lower() == "index":
            continue
        try:
            index = int(head)
        except ValueError:
            raise DataError(
                f"{path}, line {lineno}: expected '<index>,<label>;<label>...', got {raw!r}"
            ) from None
        if not found:
            raise DataError(f"{path}, line {lineno}: item {index} has no labels column")
        tokens = [t.strip() for t in _LABEL_SEP.split(rest) if t.strip()]
        out.append((index, tokens, f"line {lineno}"))
    return out


def _to_classes(tokens: list, names: dict[str, int] | None, where: str) -> list[int]:
    labels: list[int] = []
    for tok in tokens:
        if isinstance(tok, bool):
            raise DataError(f"{where}: label {tok!r} is neither a class index nor a class name")
        if isinstance(tok, int):
            c = tok
        elif isinstance(tok, str) and re.fullmatch(r"[+-]?\d+", tok.strip()):
            c = int(tok)
        elif isinstance(tok, str):
            if names is None:
                raise DataError(
                    f"{where}: label {tok!r} is a name, but no class_names were given to map it "
                    "to an index"
                )
            if tok not in names:
                raise DataError(f"{where}: unknown class name {tok!r}")
            c = names[tok]
        else:
            raise DataError(f"{where}: label {tok!r} is neither a class index nor a class name")
        if c < 0 or (names is not None and c >= len(names)):
            hi = f", {len(names)})" if names is not None else ", ...)"
            raise DataError(f"{where}: class index {c} is outside [0{hi}")
        if c not in labels:
            labels.append(c)
    if not labels:
        raise DataError(f"{where}: no labels; every item needs at least one weak label")
    return labels


def sample_weak_labels(weak: Sequence[Sequence[int]], seed: int) -> np.ndarray:
    """One label per item drawn uniformly from its set, fixed by ``seed`` (App. B, videos).

    Args:
        weak: per item, its labels (non-empty).
        seed: seeds ``numpy.random.default_rng``.

    Returns:
        int64 array, N: entry i is one of ``weak[i]``.
    """
    lengths = np.fromiter((len(s) for s in weak), dtype=np.int64, count=len(weak))
    if (lengths == 0).any():
        raise DataError(f"item {int(np.argmin(lengths))} has no weak labels")
    flat = np.fromiter((c for s in weak for c in s), dtype=np.int64, count=int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pick = np.random.default_rng(seed).integers(0, lengths) if len(weak) else lengths
    return flat[starts + pick]


def multi_hot(weak: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Multi-hot matrix: uint8, N x K, entry (i, c) = 1 iff c is one of item i's labels."""
    out = np.zeros((len(weak), num_classes), dtype=np.uint8)
    for i, s in enumerate(weak):
        out[i, list(s)] = 1
    return out


@register_objective("weak")
class WeakLabelObjective(Objective):
    """Training on several weak labels per item (ClusterFit §4.1, App. B).

    Args:
        path: a weak-label file (format in the module docstring).
        mode: ``"sample"``: one label drawn per item, fixed by the seed of :meth:`item_targets`,
            cross-entropy (the paper's video datasets); ``"multilabel"``: multi-hot targets and
            binary cross-entropy with logits, summed over classes, averaged over the batch.
        num_classes: number of classes K. None: ``len(class_names)`` when given, else the
            dataset's (given to :meth:`head_sizes`), else the largest weak label + 1.
        class_names: names for class-name labels in the file.
        n_items: the dataset's size, checked against the file when given (it is checked again
            by :meth:`item_targets`).
        weak_labels: instead of ``path``, per item its labels (class indices or names).

    Per-item target, one head of size K: ``"sample"``: int64, N; ``"multilabel"``: uint8
    ``N x K`` (so ``multilabel`` is True and batches carry ``B x K`` targets).
    """

    uses_labels = False
    distillable = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        mode: str = "sample",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        n_items: int | None = None,
        weak_labels: Sequence[Sequence[int | str]] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"weak-label mode must be one of {list(_MODES)}, got {mode!r}")
        if (path is None) == (weak_labels is None):
            raise ConfigError(
                "the weak-label objective needs exactly one of 'path' (a weak-label file) and "
                "'weak_labels' (a list of label lists)"
            )
        self.mode = mode
        if path is not None:
            self.source: str | None = str(path)
            self.weak = load_weak_labels(path, n_items, class_names)
        else:
            self.source = None
            self.weak = [
                _to_classes(list(s), _names(class_names), f"weak_labels item {i}")
                for i, s in enumerate(weak_labels)
            ]
            if n_items is not None and n_items != len(self.weak):
                raise DataError(
                    f"weak_labels lists {len(self.weak)} items but the dataset has {n_items}"
                )
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        largest = max((max(s) for s in self.weak), default=-1)
        if num_classes is not None and largest >= num_classes:
            raise ConfigError(
                f"weak label {largest} is outside [0, {num_classes}); raise num_classes"
            )
        self.num_classes = num_classes
        self._fixed_classes = num_classes
        self._largest = largest
        self._config = {
            "path": self.source if self.source is not None else "<in memory>",
            "mode": mode,
            "num_classes": num_classes,
        }

    @property
    def multilabel(self) -> bool:  # type: ignore[override]
        return self.mode == "multilabel"

    def head_sizes(self, num_classes: int | None) -> list[int]:
        """``[K]``."""
        if self._fixed_classes is None and not num_classes:
            k = self._largest + 1
        else:
            k = _resolve_classes(self._fixed_classes, num_classes, self.name)
        if k <= self._largest:
            raise ConfigError(f"weak label {self._largest} is outside the {k} classes")
        self.num_classes = k
        return [k]

    def item_targets(self, labels: np.ndarray, seed: int) -> list[np.ndarray]:
        """``[sampled labels (N, int64)]`` or ``[multi-hot (N x K, uint8)]``.

        ``labels`` (the dataset's) only gives the number of items N, which must match the file.
        """
        n = len(labels)
        if n != len(self.weak):
            raise DataError(
                f"the weak labels ({self.source or 'in memory'}) cover {len(self.weak)} items but "
                f"the dataset has {n}; they must list every item by its index"
            )
        if self.mode == "sample":
            return [sample_weak_labels(self.weak, seed)]
        k = self.num_classes if self.num_classes is not None else self._largest + 1
        return [multi_hot(self.weak, k)]

    def loss(self, logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """``"sample"``: summed cross-entropy; ``"multilabel"``: per head,
        ``BCEWithLogits(logits B x K, multi-hot B x K)`` summed over the K classes and averaged
        over the batch, summed over heads."""
        if self.mode == "sample":
            return super().loss(logits, targets)
        _check_heads(self.name, logits, targets)
        total = logits[0].new_zeros(())
        for out, tgt in zip(logits, targets, strict=True):
            if tgt.shape != out.shape:
                raise ClusterFitError(
                    f"multi-label targets {tuple(tgt.shape)} do not match logits "
                    f"{tuple(out.shape)}; the head size must be the number of classes"
                )
            bce = F.binary_cross_entropy_with_logits(
                out, tgt.to(device=out.device, dtype=out.dtype), reduction="sum"
            )
            total = total + bce / out.shape[0]
        return total


def _names(class_names: Sequence[str] | None) -> dict[str, int] | None:
    return {n: i for i, n in enumerate(class_names)} if class_names is not None else None
