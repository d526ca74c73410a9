"""k-means as an estimator: ClusterFit's clustering step (Yan et al., CVPR 2020, §3).

ClusterFit clusters the (L2-normalised) features of N_pre with k-means and uses the cluster ids as
pseudo-labels for N_cf. The paper runs k-means on a 200M-item subsample for 30 iterations and then
5 more iterations over all points (§3); :class:`KMeans` does the same with ``subsample=`` and
``refine_iter=``, streaming the full data in chunks from a ``.npy`` memmap so that peak memory does
not grow with N.

One Lloyd algorithm, two assignment backends:

* ``"faiss"``: the nearest centroid of each chunk of rows comes from a flat faiss index
  (``IndexFlatL2``, or ``IndexFlatIP`` for spherical k-means; on GPU with faiss-gpu). We run our own
  Lloyd loop around the index instead of ``faiss.Kmeans`` so that no point is silently dropped
  (``faiss.Kmeans`` trains on at most 256·K points by default), empty clusters are re-seeded and
  counted exactly as in the torch backend, and each iteration is recorded.
* ``"torch"``: the assignment is a GEMM, ``argmin_k ||x||² - 2 x·c_k + ||c_k||²``, computed in
  blocks of rows on CPU or GPU. Under ``torchrun`` each rank holds its shard of the rows
  (:func:`clusterfit.distributed.shard`); centroid sums, counts and the objective are all-reduced,
  so every rank ends with the centroids of a single-process run on the same data and seed.

Both backends share everything else. Under torch.distributed every rank passes the same full X
and works on its shard of the rows (the faiss backend there needs a CPU/gloo process group).
Reading: a whole ``.npy`` memmap (as ``np.load(path, mmap_mode="r")`` returns) is read chunk by
chunk with ``pread`` into fresh buffers, so the file's pages never count in the resident set;
other memmaps (views) are read through the mapping and their pages released after each chunk.
``benchmarks/kmeans.py`` times the faiss backend against ``faiss.Kmeans`` and scikit-learn.

Centroid sums are accumulated per chunk in float32 and across chunks (and ranks) in float64.
Empty clusters are re-seeded faiss-style: the centroid of a cluster chosen with probability
proportional to its size (minus one) is copied, and the two copies are pushed apart by a relative
``1/1024`` with alternating signs per dimension.

Objective (``inertia_`` and ``history_[i]["objective"]``): the sum over points of the squared
Euclidean distance to the assigned centroid for plain k-means, and the sum of ``1 - cos(x, c)``
for spherical k-means, measured in the clustering space (after optional PCA / whitening and, for
spherical k-means, L2-normalisation of the rows).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit import distributed as cfdist
from clusterfit.errors import ConfigError, DataError

__all__ = ["PCA", "KMeans", "faiss_available", "faiss_kmeans"]

SPLIT_EPS = 1.0 / 1024.0
"""Relative perturbation separating the two halves of a split cluster (as faiss)."""

_INITS = ("random", "k-means++")
_BACKENDS = ("auto", "faiss", "torch")
_GEMM_BLOCK_ELEMS = 1 << 25  # rows x K scores materialised at once by the torch assignment
_TAKE_WINDOW_BYTES = 32 << 20  # span of a memmap mapped at once while gathering a subsample
_CHUNK_BYTES = 32 << 20  # default chunk: rows of this many bytes (float32)


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_available() -> bool:
    """True when the ``faiss`` module (faiss-cpu or faiss-gpu) can be imported."""
    return _import_faiss() is not None


def _faiss_has_gpu(faiss: Any) -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# --------------------------------------------------------------------------------------------
# Raw row access: numpy array, np.memmap (streamed), torch tensor, or a path to a .npy file.
# --------------------------------------------------------------------------------------------


class _RawRows:
    """Read access to the rows of X, as float32 tensors, without converting X as a whole."""

    def __init__(self, X: Any, what: str = "X") -> None:
        if isinstance(X, (str, Path)):
            try:
                X = np.load(X, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise DataError(f"{what}: cannot read {X!s} as a .npy array ({err})") from err
        if isinstance(X, torch.Tensor):
            if not X.is_floating_point():
                raise DataError(
                    f"{what} has dtype {X.dtype}; k-means needs floating-point features "
                    "(convert with .float())"
                )
            data: Any = X.detach()
            self.device = X.device
        else:
            if not isinstance(X, np.ndarray):
                try:
                    X = np.asarray(X)
                except (TypeError, ValueError) as err:
                    raise DataError(f"{what} is not an array ({type(X).__name__}): {err}") from err
            if X.dtype.kind != "f":
                raise DataError(
                    f"{what} has dtype {X.dtype}; k-means needs floating-point features "
                    "(e.g. X.astype(np.float32))"
                )
            data = X
            self.device = torch.device("cpu")
        if data.ndim != 2:
            raise DataError(
                f"{what} must be 2-D (N rows x D features); got shape {tuple(data.shape)}"
            )
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise DataError(f"{what} is empty (shape {tuple(data.shape)})")
        self.data = data
        self.n, self.d = int(data.shape[0]), int(data.shape[1])
        self.is_tensor = isinstance(data, torch.Tensor)
        self.streamed = isinstance(data, np.memmap)
        # A whole .npy memmap (as np.load(mmap_mode="r") returns) is read with pread() into
        # fresh buffers: no page faults, and the file's pages never count in our resident set.
        self._fd: int | None = None
        if (
            self.streamed
            and isinstance(data.base, mmap.mmap)
            and data.flags.c_contiguous
            and getattr(data, "mode", None) in ("r", "r+", "w+")
            and getattr(data, "filename", None)
        ):
            try:
                self._fd = os.open(data.filename, os.O_RDONLY)
            except OSError:
                self._fd = None
            else:
                weakref.finalize(self, os.close, self._fd)
                self._file_offset = int(data.offset)
                self._row_bytes = self.d * data.dtype.itemsize
        # Whether read() returns views of X rather than copies.
        if self.is_tensor:
            self.zero_copy = data.dtype == torch.float32 and data.is_contiguous()
        else:
            self.zero_copy = (
                not self.streamed
                and data.dtype == np.float32
                and data.flags.c_contiguous
                and data.flags.writeable
            )

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a float32 tensor ((stop - start) x D) on X's device."""
        if self._fd is not None:
            return torch.from_numpy(_as_float32(self._pread(start, stop)))
        x = self.data[start:stop]
        if self.is_tensor:
            return x.float().contiguous()
        if self.streamed or not x.flags.writeable:
            out = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))
            self._release()
            return out
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (int array, best sorted for memmaps) as a float32 len(idx) x D tensor."""
        if self.is_tensor:
            return self.data[torch.as_tensor(idx, device=self.data.device)].float()
        if not self.streamed:
            return torch.from_numpy(np.array(self.data[idx], dtype=np.float32, order="C"))
        # memmap: gather window by window (_TAKE_WINDOW_BYTES of the file each), releasing the
        # pages after each, so that a sample spread over the whole file never maps all of it
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        out = np.empty((len(idx), self.d), dtype=np.float32)
        window = max(1, _TAKE_WINDOW_BYTES // (self.d * self.data.dtype.itemsize))
        edges = np.searchsorted(ordered, np.arange(0, self.n + window, window))
        for a, b in itertools.pairwise(edges.tolist()):
            if b > a:
                if self._fd is not None:
                    lo, hi = int(ordered[a]), int(ordered[b - 1]) + 1
                    out[order[a:b]] = self._pread(lo, hi)[ordered[a:b] - lo]
                else:
                    out[order[a:b]] = self.data[ordered[a:b]]
                    self._release()
        return torch.from_numpy(out)

    def _pread(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) read from the memmap's file into a new array of X's dtype."""
        assert self._fd is not None
        out = np.empty((stop - start, self.d), dtype=self.data.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        pos = self._file_offset + start * self._row_bytes
        done = 0
        while done < len(buf):
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [buf[done:]], pos + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(self._fd, len(buf) - done, pos + done)
                got = len(chunk)
                buf[done : done + got] = chunk
            if got <= 0:
                raise DataError(f"{self.data.filename}: the file ends early (truncated?)")
            done += got
        return out

    def _release(self) -> None:
        """Drop the memmap's pages from this process once copied (they stay in the OS page
        cache), so that streaming over a file larger than memory keeps the resident set flat.
        Only for read-only maps (``mode="r"``), where nothing can be lost."""
        mapping = getattr(self.data, "_mmap", None)
        if (
            mapping is not None
            and getattr(self.data, "mode", None) == "r"
            and hasattr(mapping, "madvise")
            and hasattr(mmap, "MADV_DONTNEED")
        ):
            with contextlib.suppress(OSError, ValueError):
                mapping.madvise(mmap.MADV_DONTNEED)


def _as_float32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.dtype.isnative else x.astype(np.float32)


class _Source:
    """``n`` rows owned by this process, read in chunks and mapped into the clustering space."""

    def __init__(
        self,
        read: Callable[[int, int], torch.Tensor],
        take: Callable[[np.ndarray], torch.Tensor],
        n: int,
        *,
        chunk_size: int,
        device: torch.device,
        in_memory: bool,
        zero_copy: bool,
    ) -> None:
        self._read, self._take = read, take
        self.n, self.chunk_size, self.device = n, chunk_size, device
        self.in_memory, self.zero_copy = in_memory, zero_copy
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def of_rows(
        cls, rows: _RawRows, start: int, n: int, chunk_size: int, device: torch.device
    ) -> _Source:
        return cls(
            lambda a, b: rows.read(start + a, start + b),
            lambda idx: rows.take(np.asarray(idx, dtype=np.int64) + start),
            n,
            chunk_size=chunk_size,
            device=device,
            in_memory=not rows.streamed,
            zero_copy=rows.zero_copy and rows.device == device,
        )

    @classmethod
    def of_tensor(cls, t: torch.Tensor, chunk_size: int) -> _Source:
        return cls(
            lambda a, b: t[a:b],
            lambda idx: t[torch.as_tensor(idx, device=t.device)],
            int(t.shape[0]),
            chunk_size=chunk_size,
            device=t.device,
            in_memory=True,
            zero_copy=True,
        )

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return self.transform(x) if self.transform is not None else x

    def raw_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, raw rows) for consecutive chunks of ``chunk_size`` rows."""
        for a in range(0, self.n, self.chunk_size):
            yield a, self._read(a, min(a + self.chunk_size, self.n)).to(self.device)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, rows in the clustering space) for consecutive chunks."""
        for a, x in self.raw_chunks():
            yield a, (self.transform(x) if self.transform is not None else x)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (local indices) in the clustering space."""
        return self._map(self._take(idx))

    def materialise(self, dim: int) -> None:
        """Keep the mapped rows in memory (once), unless they already are views of X."""
        if self.zero_copy and self.transform is None:
            return
        out = torch.empty((self.n, dim), dtype=torch.float32, device=self.device)
        for a, x in self.chunks():
            out[a : a + x.shape[0]] = x
        self._read = lambda a, b: out[a:b]
        self._take = lambda idx: out[torch.as_tensor(idx, device=out.device)]
        self.transform, self.zero_copy = None, True


# --------------------------------------------------------------------------------------------
# PCA (DeepCluster-style dimensionality reduction / whitening before k-means)
# --------------------------------------------------------------------------------------------


@dataclass
class PCA:
    """A fitted PCA: ``y = (x - mean) @ components.T``, divided by ``sqrt(variance)`` if whitened.

    mean: D float32; components: d x D float32 (principal axes, by decreasing variance; sign
    fixed so that each axis's largest-magnitude entry is positive); explained_variance: d float64;
    whiten: whether outputs are scaled to unit variance (``variance + 1e-8·max variance``).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def projection(self) -> np.ndarray:
        """The d x D matrix applied to centred rows (components, scaled when whitened)."""
        if not self.whiten:
            return self.components
        var = self.explained_variance
        scale = 1.0 / np.sqrt(var + 1e-8 * max(float(var.max()), 1e-30))
        return (self.components * scale[:, None]).astype(np.float32)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float32 B x D tensor to B x d (on x's device)."""
        key = str(x.device)
        if key not in self._cache:
            self._cache[key] = (
                torch.from_numpy(np.asarray(self.mean, dtype=np.float32)).to(x.device),
                torch.from_numpy(np.ascontiguousarray(self.projection.T, np.float32)).to(x.device),
            )
        mean, proj_t = self._cache[key]
        return (x - mean) @ proj_t

    def transform(self, X: Any, chunk_size: int = 65536) -> np.ndarray:
        """Map X (N x D: array, memmap, tensor) to N x d float32 numpy, ``chunk_size`` rows at a
        time."""
        rows = _RawRows(X)
        out = np.empty((rows.n, self.components.shape[0]), dtype=np.float32)
        for a in range(0, rows.n, chunk_size):
            b = min(a + chunk_size, rows.n)
            out[a:b] = self.apply(rows.read(a, b).cpu()).numpy()
        return out


def _fit_pca(src: _Source, n_total: int, dim: int, whiten: bool, device: torch.device) -> PCA:
    """PCA of the rows of ``src`` on every rank (n_total rows in all): two passes, sums all-reduced.

    Covariance of centred rows, accumulated in float32 per chunk and float64 across chunks/ranks;
    eigen-decomposition in float64.
    """
    total: torch.Tensor | None = None
    for _, x in src.raw_chunks():
        s = x.sum(0, dtype=torch.float64)
        total = s if total is None else total + s
    d = _src_dim(src, total)
    if total is None:
        total = torch.zeros(d, dtype=torch.float64, device=device)
    mean = cfdist.all_reduce_sum(total.to(device)) / n_total
    mean32 = mean.float()
    cov = torch.zeros((d, d), dtype=torch.float64, device=device)
    for _, x in src.raw_chunks():
        xc = x - mean32
        cov += (xc.T @ xc).double()
    cov = cfdist.all_reduce_sum(cov) / max(n_total - 1, 1)
    evals, evecs = np.linalg.eigh(cov.cpu().numpy())
    order = np.argsort(evals)[::-1][:dim]
    var = np.clip(evals[order], 0.0, None)
    comps = evecs[:, order].T
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return PCA(
        mean=mean.cpu().numpy().astype(np.float32),
        components=comps.astype(np.float32),
        explained_variance=var,
        whiten=whiten,
    )


def _src_dim(src: _Source, total: torch.Tensor | None) -> int:
    if total is not None:
        return int(total.shape[0])
    return int(src._read(0, 0).shape[1])


# --------------------------------------------------------------------------------------------
# Assignment backends
# --------------------------------------------------------------------------------------------


class _TorchAssigner:
    """Nearest centroid by GEMM, in blocks of rows (CPU or GPU)."""

    def __init__(self, spherical: bool) -> None:
        self.spherical = spherical

    def set_centroids(self, C: torch.Tensor) -> None:
        self.k = int(C.shape[0])
        self.ct = C.T.contiguous()
        self.neg_half_norm = -0.5 * (C * C).sum(1)

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x D float32 -> (labels B int64, distances B float32)."""
        step = max(1, _GEMM_BLOCK_ELEMS // self.k)
        labels, dists = [], []
        for a in range(0, x.shape[0], step):
            xb = x[a : a + step]
            if self.spherical:
                best, idx = (xb @ self.ct).max(1)
                dist = 1.0 - best
            else:
                best, idx = torch.addmm(self.neg_half_norm, xb, self.ct).max(1)
                dist = ((xb * xb).sum(1) - 2.0 * best).clamp_min_(0.0)
            labels.append(idx)
            dists.append(dist)
        if len(labels) == 1:
            return labels[0], dists[0]
        return torch.cat(labels), torch.cat(dists)


class _FaissAssigner:
    """Nearest centroid from a flat faiss index (exact search, k=1); CPU tensors in and out."""

    def __init__(self, spherical: bool, gpu: bool) -> None:
        self.faiss = _import_faiss()
        self.spherical = spherical
        self.gpu = gpu
        self.index: Any = None
        self._res: Any = None

    def set_centroids(self, C: torch.Tensor) -> None:
        faiss = self.faiss
        d = int(C.shape[1])
        if self.index is None or self.index.d != d:
            index = faiss.IndexFlatIP(d) if self.spherical else faiss.IndexFlatL2(d)
            if self.gpu:
                self._res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.index = index
        self.index.reset()
        self.index.add(np.ascontiguousarray(C.cpu().numpy(), dtype=np.float32))

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x D float32 (CPU) -> (labels B int64, distances B float32)."""
        xn = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        dist, idx = self.index.search(xn, 1)
        dist = dist.reshape(-1)
        dist = 1.0 - dist if self.spherical else np.maximum(dist, 0.0)
        return torch.from_numpy(idx.reshape(-1)), torch.from_numpy(dist)


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class KMeans:
    """k-means (Lloyd) clustering, plain or spherical, on faiss or torch (ClusterFit §3).

    Parameters
    ----------
    n_clusters: K.
    n_iter: Lloyd iterations on the training rows (all rows, or the subsample).
    spherical: L2-normalise the rows, assign by inner product (cosine), keep unit-norm centroids.
    seed: seeds the subsample, the initial centroids and the re-seeding of empty clusters.
    init: ``"random"`` (K distinct training rows), ``"k-means++"`` (D²-sampling over the training
        rows; K sequential passes over them), or a K x D' array of initial centroids given in the
        clustering space (D' = ``pca_dim`` or D; normalised when spherical).
    backend: ``"auto"`` (torch when ``device`` is CUDA or under torch.distributed with more than one
        process, else faiss when importable, else torch), ``"faiss"`` or ``"torch"``.
    device: torch device for the torch backend (default: X's device if X is a tensor, else CPU).
        With the faiss backend and a CUDA device, faiss-gpu searches on GPU 0.
    subsample: train on a random subset of rows, held in memory: an int count or a float fraction
        in (0, 1]. ``None``: all rows.
    refine_iter: further Lloyd iterations over *all* rows after training, streamed in chunks.
    chunk_size: rows read (from a memmap) and assigned at a time; default: about 32 MB of float32
        rows (``2**23 // D``, at least 1024).
    pca_dim: reduce to this many principal components first (fitted on the training rows);
        ``cluster_centers_`` then live in the PCA space and ``pca_`` holds the projection.
    whiten: scale the principal components to unit variance (needs ``pca_dim``).
    progress: show a tqdm bar over iterations (rank 0 only).

    X (for ``fit`` / ``predict``) is an N x D float array: numpy, torch tensor, ``np.memmap``
    (``np.load(path, mmap_mode="r")``, read in chunks and never loaded whole unless subsampled),
    or a path to a ``.npy`` file. Under torch.distributed every rank passes the same full X and
    works on its shard of the rows; ``labels_`` is gathered on every rank.

    Fitted attributes
    -----------------
    cluster_centers_: K x D' float32 numpy (in the clustering space: after PCA / whitening).
    labels_: N int64, the final assignment of every row to ``cluster_centers_``.
    inertia_: objective of that assignment: sum of squared distances (plain) or sum of
        ``1 - cos`` (spherical), in the clustering space.
    n_iter_: Lloyd iterations run (``n_iter + refine_iter``).
    history_: one dict per iteration: ``iteration``, ``phase`` ("train" | "refine"),
        ``objective`` (of that iteration's assignment, before its centroid update), ``n_points``,
        ``n_empty_reseeded``, ``seconds``.
    n_reseeded_: empty clusters re-seeded, over all iterations.
    pca_: :class:`PCA` or None. backend_, device_: what was used. n_features_in_: D.
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_iter: int = 20,
        spherical: bool = False,
        seed: int = 0,
        init: str | np.ndarray | torch.Tensor = "random",
        backend: str = "auto",
        device: str | torch.device | None = None,
        subsample: int | float | None = None,
        refine_iter: int = 0,
        chunk_size: int | None = None,
        pca_dim: int | None = None,
        whiten: bool = False,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.spherical = spherical
        self.seed = seed
        self.init = init
        self.backend = backend
        self.device = device
        self.subsample = subsample
        self.refine_iter = refine_iter
        self.chunk_size = chunk_size
        self.pca_dim = pca_dim
        self.whiten = whiten
        self.progress = progress

    def __repr__(self) -> str:
        return (
            f"KMeans(n_clusters={self.n_clusters}, n_iter={self.n_iter}, "
            f"spherical={self.spherical}, backend={self.backend!r})"
        )

    # ---------------------------------------------------------------- parameters and setup

    def _check_params(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.n_clusters) or self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be a positive int, got {self.n_clusters!r}")
        for name in ("n_iter", "refine_iter"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {v!r}")
        if self.chunk_size is not None and (not is_int(self.chunk_size) or self.chunk_size < 1):
            raise ConfigError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if isinstance(self.init, str) and self.init not in _INITS:
            raise ConfigError(f"init must be one of {_INITS} or a K x D array, got {self.init!r}")
        if self.backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        s = self.subsample
        if s is not None and not (
            (is_int(s) and s >= 1) or (isinstance(s, float) and 0.0 < s <= 1.0)
        ):
            raise ConfigError(
                f"subsample must be None, an int >= 1 (rows) or a float in (0, 1] (fraction), "
                f"got {s!r}"
            )
        if self.pca_dim is not None and (not is_int(self.pca_dim) or self.pca_dim < 1):
            raise ConfigError(f"pca_dim must be None or a positive int, got {self.pca_dim!r}")
        if self.whiten and self.pca_dim is None:
            raise ConfigError("whiten=True needs pca_dim (whitening is applied after PCA)")

    def _resolve_backend(self, rows: _RawRows) -> tuple[str, torch.device, bool]:
        """-> (backend, device for our tensors, whether faiss searches on GPU)."""
        device = torch.device(self.device) if self.device is not None else rows.device
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device} requested but CUDA is not available")
        faiss = _import_faiss()
        backend = self.backend
        if backend == "auto":
            if device.type != "cpu" or cfdist.get_world_size() > 1 or faiss is None:
                backend = "torch"
            else:
                backend = "faiss"
        if backend == "torch":
            return "torch", device, False
        if faiss is None:
            raise ConfigError("backend='faiss' but faiss is not installed: pip install faiss-cpu")
        gpu = device.type == "cuda"
        if gpu and not _faiss_has_gpu(faiss):
            raise ConfigError(
                f"backend='faiss' with device={device} needs faiss-gpu; "
                "use backend='torch' for GPU k-means"
            )
        return "faiss", torch.device("cpu"), gpu

    def _n_train(self, n: int) -> int:
        s = self.subsample
        if s is None:
            return n
        m = math.ceil(s * n) if isinstance(s, float) else int(s)
        if m > n:
            warnings.warn(f"subsample={s} exceeds the {n} rows; training on all rows", stacklevel=3)
        return min(m, n)

    def _chunk_rows(self, d: int) -> int:
        if self.chunk_size is not None:
            return int(self.chunk_size)
        return max(1024, _CHUNK_BYTES // (4 * d))

    def _make_assigner(self) -> _TorchAssigner | _FaissAssigner:
        if self.backend_ == "faiss":
            return _FaissAssigner(self.spherical, self._faiss_gpu)
        return _TorchAssigner(self.spherical)

    def _to_space(self, x: torch.Tensor) -> torch.Tensor:
        if self.pca_ is not None:
            x = self.pca_.apply(x)
        if self.spherical:
            x = _normalise_rows(x)
        return x

    # ---------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any = None) -> KMeans:
        """Cluster the N x D rows of X; returns self (see the class docstring)."""
        del y
        self._check_params()
        rows = _RawRows(X)
        n, d, k = rows.n, rows.d, int(self.n_clusters)
        if k > n:
            raise DataError(
                f"n_clusters={k} is larger than the number of rows N={n}: lower n_clusters"
            )
        if self.pca_dim is not None and self.pca_dim > d:
            raise ConfigError(f"pca_dim={self.pca_dim} exceeds the {d} features of X")
        self.backend_, self.device_, self._faiss_gpu = self._resolve_backend(rows)
        device = self.device_
        rank = cfdist.get_rank()
        chunk = self._chunk_rows(d)
        self.n_features_in_ = d
        self.pca_: PCA | None = None

        full_part = cfdist.shard(n)
        full = _Source.of_rows(rows, full_part.start, len(full_part), chunk, device)
        _validate(full, full_part.start, self.spherical, device)

        # The training rows: a seeded subsample (in memory, each rank its shard) or all rows.
        n_train = self._n_train(n)
        if n_train < k:
            raise DataError(
                f"subsample={self.subsample} keeps {n_train} rows, fewer than "
                f"n_clusters={k}: raise subsample"
            )
        if n_train < n:
            picked = np.sort(np.random.default_rng([self.seed, 1]).choice(n, n_train, False))
            part = cfdist.shard(n_train)
            mine = picked[part.start : part.stop]
            sample = torch.empty((len(mine), d), dtype=torch.float32, device=device)
            for a in range(0, len(mine), chunk):
                sample[a : a + chunk] = rows.take(mine[a : a + chunk]).to(device)
            train = _Source.of_tensor(sample, chunk)
            train_start = part.start
        else:
            train, train_start = full, full_part.start
        self.n_train_ = n_train

        if self.pca_dim is not None:
            self.pca_ = _fit_pca(train, n_train, int(self.pca_dim), self.whiten, device)
        dim = int(self.pca_dim) if self.pca_dim is not None else d
        if self.pca_ is not None or self.spherical:
            train.transform = self._to_space
            full.transform = self._to_space
        if train.in_memory:
            train.materialise(dim)

        centroids = self._initial_centroids(train, train_start, n_train, dim, device)
        centroids = centroids.cpu().numpy().astype(np.float32)
        assigner = self._make_assigner()
        split_rng = np.random.default_rng([self.seed, 2])
        self.history_: list[dict[str, Any]] = []
        self.n_reseeded_ = 0
        total_iter = int(self.n_iter) + int(self.refine_iter)
        bar = tqdm(
            total=total_iter, desc="k-means", disable=not self.progress or rank != 0, leave=False
        )
        phases = [
            ("train", train, int(self.n_iter), n_train),
            ("refine", full, int(self.refine_iter), n),
        ]
        it = 0
        for phase, src, count, n_points in phases:
            for _ in range(count):
                t0 = time.perf_counter()
                assigner.set_centroids(torch.from_numpy(centroids).to(device))
                sums, counts, obj, _ = _lloyd_pass(src, assigner, k, dim, device, True, False)
                centroids, n_split = _update(
                    sums, counts, centroids, split_rng, self.spherical, SPLIT_EPS
                )
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                it += 1
                self.n_reseeded_ += n_split
                self.history_.append(
                    {
                        "iteration": it,
                        "phase": phase,
                        "objective": obj,
                        "n_points": n_points,
                        "n_empty_reseeded": n_split,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                bar.set_postfix(objective=f"{obj:.5g}", reseeded=self.n_reseeded_)
                bar.update(1)
        bar.close()
        self.n_iter_ = it

        assigner.set_centroids(torch.from_numpy(centroids).to(device))
        _, _, inertia, local_labels = _lloyd_pass(full, assigner, k, dim, device, False, True)
        assert local_labels is not None
        labels = cfdist.all_gather_cat(torch.from_numpy(local_labels).to(device))
        self.labels_ = labels.cpu().numpy().astype(np.int64, copy=False)
        self.inertia_ = inertia
        self.cluster_centers_ = centroids
        return self

    def _initial_centroids(
        self, src: _Source, start: int, n_train: int, dim: int, device: torch.device
    ) -> torch.Tensor:
        """K x dim float32 on ``device``, identical on every rank."""
        k = int(self.n_clusters)
        rng = np.random.default_rng([self.seed, 3])
        if not isinstance(self.init, str):
            init_np = np.array(
                self.init.detach().cpu() if isinstance(self.init, torch.Tensor) else self.init,
                dtype=np.float32,
            )
            if init_np.shape != (k, dim):
                raise DataError(
                    f"init array has shape {init_np.shape}; expected (n_clusters, D) = "
                    f"({k}, {dim}) in the clustering space"
                )
            if not np.isfinite(init_np).all():
                raise DataError("init array contains NaN or inf")
            init = torch.from_numpy(init_np).to(device)
            return _normalise_rows(init) if self.spherical else init
        if self.init == "random":
            chosen = rng.choice(n_train, k, replace=False)
            return _gather_global(src, start, chosen, dim, device)
        return _kmeans_plus_plus(src, start, n_train, k, dim, rng, self.spherical, device)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return ``labels_`` (N int64)."""
        return self.fit(X, y).labels_

    # ---------------------------------------------------------------- predict

    def predict(self, X: Any) -> np.ndarray:
        """Nearest centroid of each row of raw X (N x D; PCA applied): N int64 numpy.

        Local to this process (no collectives); X is read ``chunk_size`` rows at a time.
        """
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this KMeans is not fitted yet: call fit(X) first")
        rows = _RawRows(X)
        if rows.d != self.n_features_in_:
            raise DataError(
                f"X has {rows.d} features but the model was fitted on {self.n_features_in_}"
            )
        src = _Source.of_rows(rows, 0, rows.n, self._chunk_rows(rows.d), self.device_)
        assigner = self._make_assigner()
        assigner.set_centroids(torch.from_numpy(self.cluster_centers_).to(self.device_))
        out = np.empty(rows.n, dtype=np.int64)
        for a, x in src.raw_chunks():
            bad = ~torch.isfinite(x).all(1) if x.device.type != "cpu" else None
            if x.device.type == "cpu":
                bad = torch.from_numpy(~np.isfinite(x.numpy()).all(1))
            assert bad is not None
            if bool(bad.any()):
                first = (torch.nonzero(bad).flatten()[:5] + a).tolist()
                raise DataError(f"X has NaN or inf values in rows {first} (first few)")
            lab, _ = assigner.assign(self._to_space(x))
            out[a : a + x.shape[0]] = lab.cpu().numpy()
        return out


# --------------------------------------------------------------------------------------------
# Algorithm pieces
# --------------------------------------------------------------------------------------------


def _validate(src: _Source, start: int, spherical: bool, device: torch.device) -> None:
    """Raise DataError (on every rank) if any row is non-finite, or all-zero when spherical."""
    n_bad = torch.zeros(2, dtype=torch.float64, device=device)
    first = torch.full((2, 5), -1, dtype=torch.int64, device=device)
    for a, x in src.raw_chunks():
        for j, bad in enumerate(_bad_rows(x, spherical)):
            if len(bad):
                have = int((first[j] >= 0).sum())
                if have < 5:
                    ids = torch.as_tensor(bad[: 5 - have] + (start + a))
                    first[j, have : have + len(ids)] = ids.to(device)
                n_bad[j] += len(bad)
    cfdist.all_reduce_sum(n_bad)
    firsts = cfdist.all_gather_cat(first.reshape(1, 10)).reshape(-1, 2, 5)
    problems = []
    for j, what in enumerate(("NaN or inf values", "all-zero values (spherical k-means)")):
        if n_bad[j] > 0:
            ids = firsts[:, j].flatten()
            ids = sorted(int(i) for i in ids if i >= 0)[:5]
            problems.append(f"{int(n_bad[j])} rows with {what}, e.g. rows {ids}")
    if problems:
        hint = (
            "remove or fix these rows"
            if n_bad[1] == 0
            else "remove these rows (they have no direction) or use spherical=False"
        )
        raise DataError("X has " + "; ".join(problems) + f": {hint}")


def _bad_rows(x: torch.Tensor, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Local indices of the rows of x with NaN / inf values, and (spherical) of all-zero rows.

    One pass computes the squared row norms; only rows whose norm is non-finite (or zero) are
    checked element by element (a huge finite row can overflow the norm, a tiny one underflow).
    """
    if x.device.type == "cpu":
        xn = x.numpy()
        sq = np.einsum("ij,ij->i", xn, xn)
        cand = np.nonzero(~np.isfinite(sq))[0]
        nonfinite = cand[~np.isfinite(xn[cand]).all(1)]
        zero = np.zeros(0, dtype=np.int64)
        if spherical:
            cand = np.nonzero(sq == 0)[0]
            zero = cand[(xn[cand] == 0).all(1)]
        return nonfinite, zero
    sq = (x * x).sum(1)
    cand = torch.nonzero(~torch.isfinite(sq))[:, 0]
    nonfinite = cand[~torch.isfinite(x[cand]).all(1)].cpu().numpy()
    zero = np.zeros(0, dtype=np.int64)
    if spherical:
        cand = torch.nonzero(sq == 0)[:, 0]
        zero = cand[(x[cand] == 0).all(1)].cpu().numpy()
    return nonfinite, zero


def _gather_global(
    src: _Source, start: int, chosen: np.ndarray, dim: int, device: torch.device
) -> torch.Tensor:
    """Rows ``chosen`` (global training indices, in that order) on every rank: each rank fills in
    the rows it owns, and a sum over ranks assembles them. Returns len(chosen) x dim float32."""
    buf = torch.zeros((len(chosen), dim), dtype=torch.float32, device=device)
    local = chosen - start
    mine = np.nonzero((local >= 0) & (local < src.n))[0]
    if len(mine):
        order = np.argsort(local[mine])
        rows = src.take(local[mine][order])
        buf[torch.as_tensor(mine[order], device=device)] = rows.to(device)
    return cfdist.all_reduce_sum(buf)


def _kmeans_plus_plus(
    src: _Source,
    start: int,
    n_train: int,
    k: int,
    dim: int,
    rng: np.random.Generator,
    spherical: bool,
    device: torch.device,
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) over the sharded training rows.

    Each new centre is drawn with probability proportional to the squared distance (``1 - cos``
    when spherical) to the nearest centre so far; one pass over the rows per centre.
    """
    centroids = torch.empty((k, dim), dtype=torch.float32, device=device)
    first = np.array([rng.integers(n_train)])
    centroids[0] = _gather_global(src, start, first, dim, device)[0]
    cache_norms = src.in_memory and src.transform is None
    norms = (
        torch.cat([(x * x).sum(1) for _, x in src.chunks()])
        if cache_norms and src.n and not spherical
        else None
    )
    d2 = torch.empty(src.n, dtype=torch.float32, device=device)

    def update(c: torch.Tensor, first_time: bool) -> None:
        for a, x in src.chunks():
            dot = x @ c
            if spherical:
                dist = 1.0 - dot
            else:
                xx = norms[a : a + x.shape[0]] if norms is not None else (x * x).sum(1)
                dist = (xx - 2.0 * dot + (c * c).sum()).clamp_min_(0.0)
            part = d2[a : a + x.shape[0]]
            if first_time:
                part.copy_(dist)
            else:
                torch.minimum(part, dist, out=part)

    update(centroids[0], True)
    rank = cfdist.get_rank()
    for j in range(1, k):
        local_total = d2.sum(dtype=torch.float64).reshape(1)
        totals = cfdist.all_gather_cat(local_total).cpu().numpy()
        total = float(totals.sum())
        u = rng.random() * total
        if total <= 0.0:  # every row coincides with a centre: fall back to uniform choice
            chosen = np.array([rng.integers(n_train)])
            centroids[j] = _gather_global(src, start, chosen, dim, device)[0]
        else:
            cum = np.cumsum(totals)
            owner = min(int(np.searchsorted(cum, u, side="right")), len(cum) - 1)
            buf = torch.zeros((1, dim), dtype=torch.float32, device=device)
            if owner == rank:
                local_u = u - (cum[owner - 1] if owner > 0 else 0.0)
                cs = torch.cumsum(d2, 0, dtype=torch.float64)
                pos = torch.searchsorted(
                    cs, torch.tensor([local_u], dtype=torch.float64, device=cs.device), right=True
                )
                i = min(int(pos.item()), src.n - 1)
                buf[0] = src.take(np.array([i]))[0].to(device)
            centroids[j] = cfdist.all_reduce_sum(buf)[0]
        update(centroids[j], False)
    return centroids


def _lloyd_pass(
    src: _Source,
    assigner: _TorchAssigner | _FaissAssigner,
    k: int,
    dim: int,
    device: torch.device,
    accumulate: bool,
    keep_labels: bool,
) -> tuple[np.ndarray | None, np.ndarray, float, np.ndarray | None]:
    """One assignment pass over ``src``: (sums K x dim float64, counts K float64, objective,
    local labels int64), all numpy, with sums, counts and objective summed over ranks.

    On CPU the bookkeeping is numpy (single-threaded: small ops gain nothing from threads, and
    thread pools that spin-wait are slow on shared cores); on GPU it stays on the device.
    """
    on_cpu = device.type == "cpu"
    labels = np.empty(src.n, dtype=np.int64) if keep_labels else None
    if on_cpu:
        sums_np = np.zeros((k, dim)) if accumulate else None
        counts_np = np.zeros(k)
        obj = 0.0
        for a, x in src.chunks():
            lab, dist = assigner.assign(x)
            lab_np = lab.numpy()
            if sums_np is not None:
                sums_np += _chunk_sums(lab_np, x.numpy(), k)
            counts_np += np.bincount(lab_np, minlength=k)
            obj += float(dist.numpy().sum(dtype=np.float64))
            if labels is not None:
                labels[a : a + len(lab_np)] = lab_np
        sums = torch.from_numpy(sums_np) if sums_np is not None else None
        stats = torch.from_numpy(np.append(counts_np, obj))
    else:
        sums = torch.zeros((k, dim), dtype=torch.float64, device=device) if accumulate else None
        part = torch.empty((k, dim), dtype=torch.float32, device=device) if accumulate else None
        stats = torch.zeros(k + 1, dtype=torch.float64, device=device)  # counts, objective
        for a, x in src.chunks():
            lab, dist = assigner.assign(x)
            lab = lab.to(device)
            if sums is not None and part is not None:
                part.zero_()
                sums += part.index_add_(0, lab, x)
            stats[:k] += torch.bincount(lab, minlength=k)
            stats[k] += dist.to(device).sum(dtype=torch.float64)
            if labels is not None:
                labels[a : a + lab.shape[0]] = lab.cpu().numpy()
    if sums is not None:
        cfdist.all_reduce_sum(sums)
    cfdist.all_reduce_sum(stats)
    stats_np = stats.cpu().numpy()
    sums_out = sums.cpu().numpy() if sums is not None else None
    return sums_out, stats_np[:k], float(stats_np[k]), labels


def _chunk_sums(lab: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of x (B x D float32) by label (B ints): K x D float32.

    A sparse (K x B, one 1 per column) @ x product: one streaming pass over x, single-threaded.
    (Splitting it over a thread pool was slower next to faiss's BLAS / OpenMP threads: measured
    1.35 s vs 1.15 s per fit of 100k x 128 into K=1000 on 16 cores, faiss.Kmeans 1.13 s.)
    """
    import scipy.sparse

    b = len(lab)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(b, dtype=np.float32), lab, np.arange(b + 1)), shape=(b, k)
    )
    return np.asarray(onehot.T @ x)


def _update(
    sums: np.ndarray | None,
    counts: np.ndarray,
    previous: np.ndarray,
    rng: np.random.Generator,
    spherical: bool,
    eps: float,
) -> tuple[np.ndarray, int]:
    """New K x D float32 centroids (means of their points) and the number of empty clusters
    re-seeded by splitting a cluster chosen with probability proportional to (size - 1).

    sums: K x D float64, counts: K, previous: K x D (kept for clusters that stay empty).
    """
    assert sums is not None
    cent = np.array(previous, dtype=np.float64)
    nonempty = counts > 0
    cent[nonempty] = sums[nonempty] / counts[nonempty, None]
    empty = np.nonzero(~nonempty)[0].tolist()
    if empty:
        sizes = np.array(counts, dtype=np.float64)
        sign = np.ones(cent.shape[1])
        sign[1::2] = -1.0
        for ci in empty:
            weight = np.maximum(sizes - 1.0, 0.0)
            if weight.sum() <= 0:
                weight = sizes.copy()
            cj = int(rng.choice(len(sizes), p=weight / weight.sum()))
            base = cent[cj].copy()
            cent[ci] = base * (1.0 + eps * sign)
            cent[cj] = base * (1.0 - eps * sign)
            sizes[ci] = sizes[cj] / 2.0
            sizes[cj] -= sizes[ci]
    if spherical:
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32), len(empty)


# --------------------------------------------------------------------------------------------
# faiss.Kmeans itself, with every point used (reference for benchmarks and comparisons)
# --------------------------------------------------------------------------------------------


def faiss_kmeans(
    X: np.ndarray,
    n_clusters: int,
    *,
    n_iter: int = 20,
    spherical: bool = False,
    seed: int = 0,
    init_centroids: np.ndarray | None = None,
    max_points_per_centroid: int | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Run ``faiss.Kmeans`` directly on X (N x D float32, in memory): (K x D centroids, objective
    per iteration).

    ``faiss.Kmeans`` trains on at most ``max_points_per_centroid``·K points (default 256·K) and
    drops the rest silently. Here ``max_points_per_centroid`` defaults to ceil(N / K), so every
    point is used, with a warning when faiss's default would have dropped points; pass a value
    to subsample on purpose (a warning then says how many points are dropped).
    """
    faiss = _import_faiss()
    if faiss is None:
        raise ConfigError("faiss is not installed: pip install faiss-cpu")
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    default_cap = 256 * n_clusters
    if max_points_per_centroid is None:
        max_points_per_centroid = max(256, math.ceil(n / n_clusters))
        if n > default_cap:
            warnings.warn(
                f"faiss.Kmeans would by default train on only {default_cap} of the {n} points "
                f"(256 per centroid); max_points_per_centroid raised to "
                f"{max_points_per_centroid} so that all points are used",
                stacklevel=2,
            )
    elif n > max_points_per_centroid * n_clusters:
        warnings.warn(
            f"faiss.Kmeans trains on {max_points_per_centroid * n_clusters} of the {n} points "
            f"(max_points_per_centroid={max_points_per_centroid})",
            stacklevel=2,
        )
    km = faiss.Kmeans(
        d,
        n_clusters,
        niter=n_iter,
        seed=seed,
        spherical=spherical,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
    )
    if init_centroids is not None:
        km.train(X, init_centroids=np.ascontiguousarray(init_centroids, dtype=np.float32))
    else:
        km.train(X)
    return np.asarray(km.centroids, dtype=np.float32), [float(o) for o in km.obj]
