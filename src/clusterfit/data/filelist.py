"""File lists: the items of a dataset before decoding, and the CSV reader.

A :class:`FileList` is what an image folder (:mod:`clusterfit.data.folders`) or a CSV file list
(:func:`read_csv`) turns into: the image paths, one label per path (-1 where unknown) and the class
names. :func:`clusterfit.data.load_images` decodes it.

CSV format (a header row is required; column order is free, extra columns are ignored)::

    path,label
    images/cat_001.jpg,cat
    images/dog_007.png,dog
    /abs/path/unknown.jpg,

* ``path`` (required): an image file; relative paths are resolved against the CSV file's folder,
  ``~`` is expanded.
* ``label`` (optional): a class name. Class names are sorted to give class indices (numerically
  when every name is an integer, so ``"2"`` comes before ``"10"``); an empty cell means unknown
  (label -1). Without a ``label`` column every item is unlabelled.
* ``split`` (optional): with ``load_images(csv, split="train")`` only the rows whose ``split`` cell
  equals ``"train"`` are kept; asking for a split of a CSV without a ``split`` column is an error.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clusterfit.errors import DataError


@dataclass
class FileList:
    """Image files to decode, with labels.

    paths: absolute image paths (strings, for speed on large lists), in item order.
    labels: int64 array (len(paths),), class index or -1 where unknown.
    classes: class names, index = label; empty when nothing is labelled.
    root: the folder that relative names are taken against (for fingerprints and messages).
    source: human description of where the list came from.
    """

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    root: Path
    source: str
    empty_classes: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """Paths relative to :attr:`root` (``../`` where outside it), with ``/`` separators."""
        prefix = os.path.join(str(self.root), "")
        names = [
            p[len(prefix) :] if p.startswith(prefix) else os.path.relpath(p, self.root)
            for p in self.paths
        ]
        return names if os.sep == "/" else [n.replace(os.sep, "/") for n in names]

    def take(self, indices: np.ndarray) -> FileList:
        """The items at ``indices`` (int array), in that order; classes are kept."""
        idx = np.asarray(indices, dtype=np.int64)
        return FileList(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            root=self.root,
            source=self.source,
            empty_classes=list(self.empty_classes),
        )


def sort_class_names(names: Sequence[str]) -> list[str]:
    """Class names in index order: numeric order when all are integers, string order otherwise."""
    unique = set(names)
    try:
        return sorted(unique, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(unique)


def read_csv(csv_path: Path, split: str | None = None) -> FileList:
    """Read a CSV file list (format in the module docstring) into a :class:`FileList`.

    Raises DataError for a file without a header or ``path`` column, an empty ``path`` cell, a
    listed file that does not exist, a ``split`` asked of a CSV without a ``split`` column or a
    split with no rows, and a CSV with no rows.
    """
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [
                (reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()})
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the CSV file list {csv_path}: {e}") from e

    if "path" not in header:
        raise DataError(
            f"CSV file list {csv_path} has no 'path' column (header: {header or 'none'}). "
            "The first row must be a header naming the columns, e.g. 'path,label'."
        )
    has_label = "label" in header
    if split is not None:
        if "split" not in header:
            raise DataError(
                f"split={split!r} was asked of the CSV file list {csv_path}, which has no 'split' "
                "column; add one or pass split=None."
            )
        found = sorted({r["split"] for _, r in rows})
        rows = [(n, r) for n, r in rows if r["split"] == split]
        if not rows:
            raise DataError(
                f"no rows of {csv_path} have split {split!r}; splits present: {found}. "
                "Pass one of those."
            )
    if not rows:
        raise DataError(f"CSV file list {csv_path} lists no images; add rows below the header.")

    paths: list[str] = []
    names: list[str] = []
    for line, row in rows:
        cell = row["path"]
        if not cell:
            raise DataError(f"{csv_path}, line {line}: empty 'path' cell; give an image path.")
        p = Path(os.path.expanduser(cell))
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise DataError(
                f"{csv_path}, line {line}: image {cell!r} not found (looked for {p}). "
                "Relative paths are taken against the CSV file's folder."
            )
        paths.append(str(p))
        names.append(row.get("label", "") if has_label else "")

    classes = sort_class_names([n for n in names if n])
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[n] if n else -1 for n in names], dtype=np.int64)
    source = f"CSV file list {csv_path}" + (f" (split {split})" if split else "")
    return FileList(paths=paths, labels=labels, classes=classes, root=base, source=source)
