"""Datasets held in memory as one uint8 tensor: :class:`ImageSet` and :func:`load_images`.

ClusterFit (Yan et al., CVPR 2020) touches the same dataset D_cf several times (feature extraction
with N_pre, k-means, training N_cf on the cluster ids, Sec. 3) and probes on target datasets
(Sec. 4); at the sizes this project runs, decoding once and keeping uint8 pixels in memory is both
the simplest and the fastest shape. Items are addressed by index: row ``i`` of ``images`` is item
``i`` everywhere (features, assignments, labels).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clusterfit import distributed
from clusterfit.data import cache as _cache
from clusterfit.data.bundled import is_bundled, load_bundled_arrays
from clusterfit.data.decode import decode_files, resize_array
from clusterfit.data.filelist import FileList, read_csv
from clusterfit.data.folders import list_image_folder
from clusterfit.errors import DataError


def _sha256(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(repr=False)
class ImageSet:
    """A dataset in memory.

    images: uint8 tensor N x C x H x W (C = 1 or 3), contiguous. Models take
        ``images.float() / 255`` (see :func:`clusterfit.data.transforms.to_float`).
    labels: int64 array (N,), class index, -1 where unknown.
    classes: class names, index = label; empty when unlabelled.
    source: human description of where the items came from.
    fingerprint: hex digest identifying the content, stable across processes and machines.
    """

    images: torch.Tensor
    labels: np.ndarray
    classes: list[str]
    source: str
    fingerprint: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError("ImageSet.images must be a uint8 torch.Tensor (N x C x H x W)")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                "ImageSet.images must be N x C x H x W with C = 1 or 3, got "
                f"{tuple(self.images.shape)}"
            )
        self.images = self.images.contiguous()
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        self.classes = list(self.classes)
        if len(self.labels) and self.labels.max(initial=-1) >= len(self.classes):
            raise ValueError(
                f"label {int(self.labels.max())} out of range for {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_labels(self) -> bool:
        """True when every item has a known label (none is -1) and there is at least one item."""
        return len(self) > 0 and bool((self.labels >= 0).all())

    @property
    def num_classes(self) -> int:
        """``len(classes)`` (0 when unlabelled)."""
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
        """The items at ``indices`` (ints, in the given order, or a boolean mask of length N).

        Classes are kept; the fingerprint is derived from this set's and the indices.
        """
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask of shape {idx.shape} for {len(self)} items")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} items")
        idx = np.where(idx < 0, idx + len(self), idx)
        return ImageSet(
            images=self.images[torch.from_numpy(idx)],
            labels=self.labels[idx],
            classes=list(self.classes),
            source=f"{self.source} [{len(idx)} of {len(self)}]",
            fingerprint=_sha256(self.fingerprint, "subset", idx.tobytes()),
        )

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (
            f"ImageSet({n} x {c} x {h} x {w}, {len(self.classes)} classes, "
            f"source={self.source!r}, fingerprint={self.fingerprint[:12]})"
        )


def balanced_indices(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` item indices, as equal per class as the class sizes allow.

    labels: int array (N,), -1 = unknown (unknown items form one more group). Every group gets
    ``limit // groups`` items; groups too small give their share to the others; the last
    ``limit mod groups`` items go to groups picked at random. Without labels it is a plain random
    subset. Deterministic given ``seed``. Returns sorted int64 indices (all of them when
    ``limit >= N``).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = np.zeros(len(groups), dtype=np.int64)
    remaining = limit
    while remaining > 0:
        open_groups = np.flatnonzero(quota < sizes)
        share = remaining // len(open_groups)
        if share == 0:
            lucky = rng.choice(open_groups, size=remaining, replace=False)
            quota[lucky] += 1
            break
        add = np.minimum(share, sizes[open_groups] - quota[open_groups])
        quota[open_groups] += add
        remaining -= int(add.sum())
    picked = [rng.permutation(np.flatnonzero(inverse == g))[: quota[g]] for g in range(len(groups))]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _normalise_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def _load_bundled(
    split: str | None, size: tuple[int, int] | None, limit: int | None, seed: int
) -> ImageSet:
    images, labels, classes, digest = load_bundled_arrays(split)
    split = split or "train"
    idx = None
    if limit is not None and limit < len(labels):
        idx = balanced_indices(labels, limit, seed)
        images, labels = images[idx], labels[idx]
    if size is not None:
        images = resize_array(images, size)
    fingerprint = _sha256(
        "bundled",
        digest,
        json.dumps(list(size) if size else None),
        idx.tobytes() if idx is not None else "all",
    )
    desc = f"bundled Fashion-MNIST subset ({split} split"
    desc += f", {len(labels)} balanced of {limit} limit, seed {seed})" if idx is not None else ")"
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images[:, None])),
        labels=labels,
        classes=classes,
        source=desc,
        fingerprint=fingerprint,
    )


def _decode_or_read_cache(
    files: FileList, size: tuple[int, int] | None, cache_dir: Path | None, progress: bool
) -> tuple[np.ndarray, str]:
    """(images N x C x H x W uint8, fingerprint), from the cache when an entry matches."""
    key = _cache.cache_key(files, size) if cache_dir is not None else None
    if key is not None:
        hit = _cache.load_entry(cache_dir, key)
        if hit is not None and len(hit[0]) == len(files.paths):
            return hit[0], hit[1]["fingerprint"]
    images = decode_files(files.paths, size, progress=progress)
    pixels = hashlib.sha256(images.tobytes()).hexdigest()
    fingerprint = _sha256(
        "files",
        json.dumps(files.names()),
        files.labels.tobytes(),
        json.dumps(files.classes),
        json.dumps(list(images.shape[1:])),
        pixels,
    )
    if key is not None:
        _cache.save_entry(
            cache_dir, key, images, {"fingerprint": fingerprint, "source": files.source}
        )
    return images, fingerprint


def load_images(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = True,
) -> ImageSet:
    """Load a dataset into memory as an :class:`ImageSet` (uint8 N x C x H x W).

    source:
        ``"bundled"`` (alias ``"fashion-mnist-small"``): the packaged Fashion-MNIST subset
        (:mod:`clusterfit.data.bundled`), split ``"train"`` (default, 4,000 images) or ``"test"``
        (1,000), N x 1 x 28 x 28, 10 classes.
        A folder: class sub-folders (labelled) or images directly in it (unlabelled), see
        :mod:`clusterfit.data.folders`; with ``split``, ``<folder>/<split>`` is read.
        A ``.csv`` file list with columns ``path`` and optional ``label`` / ``split``, see
        :mod:`clusterfit.data.filelist`.
    split: for folders the sub-folder to read (it must exist); for CSVs the ``split`` column value.
    image_size: int (square: shorter side resized to it, then centre crop) or (height, width);
        None keeps the decoded size, which must then be the same for every image.
    limit: keep at most this many items, class-balanced (:func:`balanced_indices`), chosen by
        ``seed``, before decoding; the fingerprint reflects the subset.
    cache_dir: where decoded folders / CSVs are cached (:mod:`clusterfit.data.cache`); None = the
        default folder, False = no cache. Not used for the bundled set.
    progress: show a tqdm bar while decoding.

    Colour mode: 1 channel (``L``) when every image is greyscale (PIL mode L or 1), else 3 (RGB).
    Fingerprint: bundled — sha256 of the split's arrays, image size and subset; folders / CSVs —
    sha256 of the relative file names, labels, classes, output shape and decoded pixels (so it
    is the same for a copied folder and changes when any image does).
    Under ``torch.distributed`` rank 0 decodes and fills the cache first; the other ranks then read
    it.

    Raises DataError (naming the culprit) for a missing path, an unknown split, a folder or CSV
    without images, a missing or undecodable file, or images of different sizes without
    ``image_size``.
    """
    size = _normalise_size(image_size)
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of items, got {limit!r}")
    if is_bundled(source):
        return _load_bundled(split, size, limit, seed)

    path = Path(os.path.expanduser(os.fspath(source)))
    if not path.exists():
        raise DataError(
            f"dataset source {os.fspath(source)!r} not found: no such file or folder. Give an "
            "image folder, a .csv file list, or 'bundled'."
        )
    if path.is_dir():
        files = list_image_folder(path, split)
    elif path.suffix.lower() == ".csv":
        files = read_csv(path, split)
    else:
        raise DataError(
            f"dataset source {path} is a file but not a .csv file list; give an image folder, a "
            ".csv file list (columns path[,label]), or 'bundled'."
        )
    total = len(files.paths)
    if limit is not None and limit < total:
        files = files.take(balanced_indices(files.labels, int(limit), seed))

    if cache_dir is False:
        cdir = None
    elif cache_dir is None or cache_dir is True:
        cdir = _cache.default_cache_dir()
    else:
        cdir = Path(os.path.expanduser(os.fspath(cache_dir)))

    show = progress and distributed.is_main_process()
    if cdir is not None and distributed.is_distributed():
        if distributed.get_rank() == 0:
            try:
                images, fingerprint = _decode_or_read_cache(files, size, cdir, show)
            finally:
                distributed.barrier()
        else:
            distributed.barrier()
            images, fingerprint = _decode_or_read_cache(files, size, cdir, show)
    else:
        images, fingerprint = _decode_or_read_cache(files, size, cdir, show)

    unknown = int((files.labels < 0).sum())
    if files.classes and unknown:
        warnings.warn(
            f"{unknown} of {len(files.labels)} items of {files.source} have no label (-1); "
            "has_labels is False. Use .subset(np.flatnonzero(ds.labels >= 0)) for the labelled "
            "ones.",
            stacklevel=2,
        )
    desc = files.source
    if len(files.paths) < total:
        desc += f" ({len(files.paths)} of {total}, balanced, seed {seed})"
    return ImageSet(
        images=torch.from_numpy(images),
        labels=files.labels,
        classes=files.classes,
        source=desc,
        fingerprint=fingerprint,
    )
