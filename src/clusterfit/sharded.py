"""Features stored as row blocks in several ``.npy`` files, listed by a manifest (ClusterFit §3.1).

At the paper's scale (1B images) features are extracted by many processes; each writes the rows it
owns to its own file (``<layer>.<rank>-of-<world>.npy``, float32 or float16) and nothing is
gathered. ``<layer>.manifest.json`` lists the files in row order::

    {"format": "clusterfit-features/1", "shape": [N, D], "dtype": "float16",
     "shards": [{"file": "pool.00000-of-00002.npy", "start": 0, "stop": 500}, ...], ...}

:class:`ShardedArray` reads them back as one read-only N x D array, and
:class:`clusterfit.cluster.rows.RawRows` streams its rows to k-means shard by shard (each rank
reads its own rows from disk: no gather).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clusterfit.errors import DataError

FORMAT = "clusterfit-features/1"
MANIFEST_SUFFIX = ".manifest.json"

__all__ = ["FORMAT", "MANIFEST_SUFFIX", "ShardedArray", "manifest", "shard_name"]


def shard_name(layer: str, rank: int, world_size: int) -> str:
    """File name of rank ``rank``'s block of rows: ``<layer>.<rank>-of-<world>.npy``."""
    return f"{layer}.{rank:05d}-of-{world_size:05d}.npy"


def manifest(
    shape: tuple[int, int], dtype: str, shards: list[tuple[str, int, int]], **extra: Any
) -> dict[str, Any]:
    """A manifest: N x D ``shape``, the stored ``dtype``, and ``(file, start, stop)`` per shard
    in row order (files relative to the manifest's folder); ``extra`` facts are kept as given."""
    return {
        "format": FORMAT,
        "shape": [int(shape[0]), int(shape[1])],
        "dtype": str(dtype),
        "shards": [{"file": f, "start": int(a), "stop": int(b)} for f, a, b in shards],
        **extra,
    }


class ShardedArray:
    """A read-only N x D array whose rows are consecutive blocks of several ``.npy`` files.

    ``X[a:b]`` and ``X[index_array]`` return numpy copies (reading only the files concerned);
    ``np.asarray(X)`` reads everything. ``parts`` (the memory-mapped files) and ``bounds``
    (``len(parts) + 1`` row offsets) are what :class:`~clusterfit.cluster.rows.RawRows` streams.
    """

    def __init__(self, paths: list[Path], *, shape: tuple[int, int] | None = None) -> None:
        if not paths:
            raise DataError("a sharded feature array needs at least one file")
        self.paths = [Path(p) for p in paths]
        self.parts: list[np.memmap] = []
        for p in self.paths:
            try:
                part = np.load(p, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise DataError(f"{p}: cannot read this feature shard ({err})") from err
            if part.ndim != 2:
                raise DataError(f"{p}: a feature shard must be 2-D, got shape {part.shape}")
            self.parts.append(part)
        dims = {int(p.shape[1]) for p in self.parts}
        dtypes = {p.dtype for p in self.parts}
        if len(dims) != 1 or len(dtypes) != 1:
            raise DataError(
                f"feature shards disagree: widths {sorted(dims)}, dtypes {sorted(map(str, dtypes))}"
            )
        self.bounds = np.cumsum([0] + [int(p.shape[0]) for p in self.parts])
        self.shape = (int(self.bounds[-1]), dims.pop())
        self.dtype = dtypes.pop()
        if shape is not None and tuple(shape) != self.shape:
            raise DataError(f"feature shards hold {self.shape} rows x dims; expected {shape}")

    @classmethod
    def open(cls, path: str | Path) -> ShardedArray:
        """The array a manifest (``<layer>.manifest.json``) describes; its shards are checked to
        cover rows 0..N-1 in order with the recorded width and dtype."""
        path = Path(path)
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read this feature manifest ({err})") from err
        if m.get("format") != FORMAT:
            raise DataError(f"{path}: not a feature manifest (format {m.get('format')!r})")
        shards, expect = m["shards"], 0
        for s in shards:
            if s["start"] != expect:
                raise DataError(
                    f"{path}: shard {s['file']} starts at row {s['start']}, not {expect}"
                )
            expect = s["stop"]
        out = cls([path.parent / s["file"] for s in shards], shape=tuple(m["shape"]))
        if str(out.dtype) != m["dtype"]:
            raise DataError(f"{path}: shards are {out.dtype}, the manifest says {m['dtype']}")
        for s, part in zip(shards, out.parts, strict=True):
            if part.shape[0] != s["stop"] - s["start"]:
                raise DataError(f"{path}: shard {s['file']} has {part.shape[0]} rows")
        return out

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.parts)})"

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """The shard of each global row index (int array)."""
        return np.searchsorted(self.bounds, rows, side="right") - 1

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, int | np.integer):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            s = int(self.locate(np.array([i]))[0])
            return np.array(self.parts[s][i - self.bounds[s]])
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            out = np.empty((max(0, stop - start), self.shape[1]), dtype=self.dtype)
            for s, part in enumerate(self.parts):
                lo, hi = max(start, self.bounds[s]), min(stop, self.bounds[s + 1])
                if hi > lo:
                    out[lo - start : hi - start] = part[lo - self.bounds[s] : hi - self.bounds[s]]
            return out
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        which = self.locate(idx)
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            out[sel] = self.parts[s][idx[sel] - self.bounds[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0 : self.shape[0]]
        return out if dtype is None else out.astype(dtype)
