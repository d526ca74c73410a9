"""Datasets as one uint8 tensor N x C x H x W: :class:`ImageSet` and :func:`load_images`.

ClusterFit (Yan et al., CVPR 2020) touches the same dataset D_cf several times (feature extraction
with N_pre, k-means, training N_cf on the cluster ids, Sec. 3) and probes on target datasets
(Sec. 4); decoding once and indexing rows of one uint8 tensor is both the simplest and the fastest
shape. Image folders and CSV lists are decoded into a memory-mapped ``.npy`` (the cache, see
:mod:`clusterfit.data.cache`), and ``ImageSet.images`` is a tensor *over that map*: indexing a batch
reads those rows from the page cache, so a process's own (anonymous) memory does not grow with the
number of images, and the ranks of a ``torchrun`` job share one copy. Items are addressed by index:
row ``i`` of ``images`` is item ``i`` everywhere (features, assignments, labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit import distributed
from clusterfit.data import cache as _cache
from clusterfit.data.bundled import is_bundled, load_bundled_arrays
from clusterfit.data.decode import decode_into, resize_array
from clusterfit.data.filelist import FileList, read_csv
from clusterfit.data.folders import list_image_folder
from clusterfit.errors import DataError

#: a set decoded without a cache stays in memory up to this many bytes of pixels, larger ones go
#: to a memory-mapped temporary file; a subset is copied up to this size, larger ones are views
SMALL_BYTES = 64 << 20


def _sha256(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)`` sharing its memory (a memmap stays a memmap), without the
    warning that torch gives for a read-only array (writing into such a tensor is an error of the
    caller: images are never modified in place here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def scratch_array(shape: tuple[int, int, int, int]) -> np.ndarray:
    """A writable uint8 array of ``shape`` for a set decoded without a cache.

    In memory up to :data:`SMALL_BYTES`; larger, a memmap of a temporary file (in ``$TMPDIR``),
    which on POSIX is unlinked at once, so its space is freed when the last mapping of it goes
    (the :class:`ImageSet` is garbage-collected, or the process ends), elsewhere when the array
    is garbage-collected.
    """
    if math.prod(shape) <= SMALL_BYTES:
        return np.empty(shape, dtype=np.uint8)
    fd, name = tempfile.mkstemp(prefix="clusterfit-images-", suffix=".npy")
    os.close(fd)
    array = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=shape)
    if os.name == "posix":
        _unlink(name)
    else:  # pragma: no cover - an open file cannot be unlinked there
        weakref.finalize(array, _unlink, name)
    return array


class ImageRows:
    """Rows ``index`` of a uint8 N x C x H x W tensor, gathered when indexed (a lazy subset).

    What :meth:`ImageSet.subset` gives as ``images`` for a large selection of a large set, so that
    the pixels are not copied. Supports what the library does with ``ImageSet.images``: ``len``,
    ``shape``, ``dtype``, ``ndim``, ``device`` and ``rows[key]`` (an int, a slice, an int or bool
    array / tensor / list, optionally followed by more indices in a tuple), which returns a tensor
    of the gathered rows. :meth:`tensor` copies the whole selection into one tensor.
    """

    def __init__(self, base: torch.Tensor, index: np.ndarray) -> None:
        self.base = base
        self.index = np.asarray(index, dtype=np.int64).reshape(-1)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def dim(self) -> int:
        return self.base.ndim

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self.index)

    def contiguous(self) -> ImageRows:
        return self

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return self.base[int(rows[0]) : int(rows[-1]) + 1]  # a run: a view, no copy
        return self.base[torch.from_numpy(np.ascontiguousarray(rows))]

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):
            head, rest = (key[0], key[1:]) if key else (slice(None), ())
            rows = self[head]
            return rows[rest] if isinstance(head, int | np.integer) else rows[(slice(None), *rest)]
        if isinstance(key, int | np.integer):
            return self.base[int(self.index[key])]
        if isinstance(key, slice):
            return self._gather(self.index[key])
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self._gather(self.index[np.asarray(key)].reshape(-1))

    def tensor(self) -> torch.Tensor:
        """All the rows, copied into one contiguous tensor."""
        return self.base[torch.from_numpy(self.index)]

    def numpy(self) -> np.ndarray:
        return self.tensor().numpy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ImageRows({len(self)} rows of {tuple(self.base.shape)})"


@dataclass(repr=False)
class ImageSet:
    """A dataset: uint8 images with labels.

    images: uint8 tensor N x C x H x W (C = 1 or 3), C-contiguous; for folders and CSV lists a
        tensor over a memory map (rows are read when indexed), and for a large subset an
        :class:`ImageRows` view (index it like a tensor). Models take ``images.float() / 255``
        (see :func:`clusterfit.data.transforms.to_float`). Never modified in place.
    labels: int64 array (N,), class index, -1 where unknown.
    classes: class names, index = label; empty when unlabelled.
    source: human description of where the items came from.
    fingerprint: hex digest identifying the content (and the crop), stable across processes and
        machines.
    crop_size: the square size the models see, or None for the whole image: training takes a
        random resized crop of that size, feature extraction and probes the centre crop
        (:func:`clusterfit.data.transforms.center_crop`).
    """

    images: torch.Tensor | ImageRows
    labels: np.ndarray
    classes: list[str]
    source: str
    fingerprint: str
    crop_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor | ImageRows) or self.images.dtype != (
            torch.uint8
        ):
            raise TypeError("ImageSet.images must be a uint8 torch.Tensor (N x C x H x W)")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                "ImageSet.images must be N x C x H x W with C = 1 or 3, got "
                f"{tuple(self.images.shape)}"
            )
        self.images = self.images.contiguous()
        if self.crop_size is not None:
            h, w = self.images.shape[2:]
            if not 1 <= int(self.crop_size) <= min(h, w):
                raise DataError(
                    f"crop_size {self.crop_size} does not fit in the {h} x {w} images of "
                    f"{self.source}; use a crop_size of at most {min(h, w)} or a larger image_size"
                )
            self.crop_size = int(self.crop_size)
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

        Classes and crop size are kept; the fingerprint is derived from this set's and the
        indices. Pixels are copied only when the selection holds at most :data:`SMALL_BYTES`;
        a larger one is an :class:`ImageRows` view over this set's images (a tensor view when
        the indices are one ascending run).
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
        base, base_idx = self.images, idx
        if isinstance(base, ImageRows):
            base, base_idx = base.base, base.index[idx]
        rows = ImageRows(base, base_idx)
        row_bytes = math.prod(self.images.shape[1:])
        images: torch.Tensor | ImageRows = rows
        if len(idx) * row_bytes <= SMALL_BYTES:
            images = rows.tensor()
        elif len(idx) and (np.diff(base_idx) == 1).all():
            images = rows[:]  # one ascending run: a view
        return ImageSet(
            images=images,
            labels=self.labels[idx],
            classes=list(self.classes),
            source=f"{self.source} [{len(idx)} of {len(self)}]",
            fingerprint=_sha256(self.fingerprint, "subset", idx.tobytes()),
            crop_size=self.crop_size,
        )

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        crop = f", crop {self.crop_size}" if self.crop_size is not None else ""
        return (
            f"ImageSet({n} x {c} x {h} x {w}{crop}, {len(self.classes)} classes, "
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
    split: str | None,
    size: tuple[int, int] | None,
    limit: int | None,
    seed: int,
    crop_size: int | None,
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
        fingerprint=_with_crop(fingerprint, crop_size),
        crop_size=crop_size,
    )


def _with_crop(fingerprint: str, crop_size: int | None) -> str:
    """The fingerprint of a set seen through a crop (unchanged without one)."""
    return fingerprint if crop_size is None else _sha256(fingerprint, "crop", str(int(crop_size)))


def _decode_or_read_cache(
    files: FileList, size: tuple[int, int] | None, cache_dir: Path | None, progress: bool
) -> tuple[np.ndarray, str]:
    """(images uint8 N x C x H x W, fingerprint): the cache entry mapped when one matches, else
    decoded chunk by chunk into a new entry (or, without a cache, :func:`scratch_array`).

    Fingerprint: sha256 over the names, labels, classes, shape and the pixels' sha256, the latter
    computed chunk by chunk while decoding (never over the whole array at once).
    """
    key = _cache.cache_key(files, size) if cache_dir is not None else None
    writer = None
    if key is not None:
        hit = _cache.open_entry(cache_dir, key)
        if hit is not None and len(hit[0]) == len(files.paths):
            return hit[0], hit[1]["fingerprint"]
        try:
            writer = _cache.EntryWriter(cache_dir, key)
        except OSError as e:
            warnings.warn(
                f"could not write image cache in {cache_dir} ({e}); continuing without it.",
                stacklevel=3,
            )
    try:
        images, pixels = decode_into(
            files.paths,
            size,
            writer.allocate if writer is not None else scratch_array,
            progress=progress,
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    fingerprint = _sha256(
        "files",
        json.dumps(files.names()),
        files.labels.tobytes(),
        json.dumps(files.classes),
        json.dumps(list(images.shape[1:])),
        pixels,
    )
    if writer is not None:
        try:
            images, _ = writer.commit({"fingerprint": fingerprint, "source": files.source})
        except OSError as e:
            warnings.warn(
                f"could not write image cache in {cache_dir} ({e}); continuing without it.",
                stacklevel=3,
            )
            writer.abort()
    return images, fingerprint


def load_images(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    crop_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = True,
) -> ImageSet:
    """Load a dataset as an :class:`ImageSet` (uint8 N x C x H x W).

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
        None keeps the decoded size, which must then be the same for every image. This is the
        size that is decoded and cached.
    crop_size: the square size the models see (``ImageSet.crop_size``), at most the image size;
        None = the whole image. Part of the fingerprint when set.
    limit: keep at most this many items, class-balanced (:func:`balanced_indices`), chosen by
        ``seed``, before decoding; the fingerprint reflects the subset.
    cache_dir: where decoded folders / CSVs are cached as memory-mapped ``.npy`` files
        (:mod:`clusterfit.data.cache`); None = the default folder. False = no cache: the set is
        decoded into memory when its pixels take at most :data:`SMALL_BYTES`, else into a
        memory-mapped temporary file that is deleted with the set (:func:`scratch_array`).
        The bundled set (2 MB) is always in memory.
    progress: show a tqdm bar while decoding.

    Colour mode: 1 channel (``L``) when every image is greyscale (PIL mode L or 1), else 3 (RGB).
    Fingerprint: bundled — sha256 of the split's arrays, image size and subset; folders / CSVs —
    sha256 of the relative file names, labels, classes, output shape and decoded pixels (so it
    is the same for a copied folder and changes when any image does).
    Under ``torch.distributed`` rank 0 decodes and fills the cache first; the other ranks then map
    the same file.
    Memory: decoding writes each chunk straight into the memory map, and the returned images are
    a tensor over it, so the process's own memory does not grow with the number of images (the
    pixels live in the page cache, shared between processes and reclaimable).

    Raises DataError (naming the culprit) for a missing path, an unknown split, a folder or CSV
    without images, a missing or undecodable file, or images of different sizes without
    ``image_size``.
    """
    size = _normalise_size(image_size)
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of items, got {limit!r}")
    if is_bundled(source):
        return _load_bundled(split, size, limit, seed, crop_size)

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
        images=as_tensor(images),
        labels=files.labels,
        classes=files.classes,
        source=desc,
        fingerprint=_with_crop(fingerprint, crop_size),
        crop_size=crop_size,
    )
