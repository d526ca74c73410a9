"""Nearest-centroid assignment for k-means: the step that costs (ClusterFit §3 clustering step).

Every backend answers, for a chunk of rows x (B x D float32) and centroids C (K x D), the label
``argmin_k ||x - c_k||²`` (``argmax_k x·c_k`` for spherical k-means) and the distance to it, and
adds the chunk into the per-cluster sums and counts of a Lloyd pass (:meth:`Assigner.accumulate`).
The distance of plain k-means is ``max(||x||² - 2 x·c + ||c||², 0)``; of spherical k-means
``1 - x·c``. Ties go to the lowest centroid index.

* :class:`FusedAssigner` (``backend="fused"``, the default on CPU): cache-blocked, as
  scikit-learn's Lloyd. The rows are cut into tasks of 256-2048 rows (a task's B x K block of
  inner products is at most 8 MiB); each of ``torch.get_num_threads()`` worker threads takes
  the next task, computes ``-2 C xᵀ`` with a single-threaded GEMM (``torch.mm``: torch's MKL,
  10-25 % faster than numpy's OpenBLAS at these shapes) into its own reused buffer, and a
  compiled numba kernel then takes the argmin column by column (a vectorised
  compare-and-select over the B rows, 32-bit indices), the distances, the counts and the
  centroid sums (float64, per thread) while the task's rows are still in cache. No N x K
  matrix exists. With ``screen="bfloat16"`` (the default where the CPU has AMX tiles, which
  multiply bfloat16 5-8x faster than float32; "auto" picks it from K, D >= 256) the GEMM runs
  on bfloat16 copies of the centred rows and centroids, and a proven bound on its rounding
  (:mod:`clusterfit.cluster.screen`) settles each row: when its two lowest scores are further
  apart than the bound, the lowest is the nearest centroid; otherwise every centroid within the
  bound is re-checked in float64. The labels are the exact nearest centroids either way, and
  the distances exact sums of squares.
* :class:`TorchAssigner` (``backend="torch"``, GPU and torch.distributed): ``addmm`` into a
  reused block of rows x K scores (4 MiB on CPU, 128 MiB on GPU) and ``max`` into preallocated
  outputs, block by block; centroid sums by ``index_add_`` on the device.
* :class:`FaissAssigner` (``backend="faiss"``): a flat faiss index (``IndexFlatL2`` /
  ``IndexFlatIP``; faiss-gpu on a CUDA device), exact search with k=1.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from clusterfit.bfloat16 import bits
from clusterfit.cluster.rows import RawRows, RowSource, normalise_rows, validate_rows
from clusterfit.cluster.screen import (
    ScreenScratch,
    check_screen,
    resolve_screen,
    screen_kernels,
    screen_margins,
)
from clusterfit.errors import DataError

__all__ = [
    "Assigner",
    "FaissAssigner",
    "FusedAssigner",
    "TorchAssigner",
    "chunk_sums",
    "faiss_available",
    "faiss_has_gpu",
    "fused_task_rows",
    "import_faiss",
    "nearest_centroid",
    "numba_available",
]

_GPU_BLOCK_ELEMS = 1 << 25  # rows x K scores per block of the torch assignment on GPU (128 MiB)
_CPU_BLOCK_ELEMS = 1 << 20  # ... and on CPU (4 MiB: stays in the last-level cache)


def import_faiss() -> Any:
    """The ``faiss`` module, or None when it cannot be imported."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_available() -> bool:
    """True when the ``faiss`` module (faiss-cpu or faiss-gpu) can be imported."""
    return import_faiss() is not None


def faiss_has_gpu(faiss: Any) -> bool:
    """True when ``faiss`` is a GPU build and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.cache
def numba_available() -> bool:
    """True when numba (the compiler of the fused CPU kernel) can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def chunk_sums(lab: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of x (B x D float32) by label (B ints): K x D float32.

    A sparse (K x B, one 1 per column) @ x product: one streaming pass over x, single-threaded.
    """
    import scipy.sparse

    b = len(lab)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(b, dtype=np.float32), lab, np.arange(b + 1)), shape=(b, k)
    )
    return np.asarray(onehot.T @ x)


class Assigner:
    """Interface of the assignment backends (see the module docstring).

    ``set_centroids(C)`` once per Lloyd iteration (C: K x D float32), then ``assign`` or
    ``accumulate`` chunk by chunk, bracketed by ``start_pass`` / ``finish_pass``.
    """

    spherical: bool
    k: int
    _part: torch.Tensor | None = None  # reused per-chunk sums (GPU bookkeeping)

    def set_centroids(self, C: torch.Tensor) -> None:
        """Use the K x D float32 centroids C from now on."""
        raise NotImplementedError

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x D float32 -> (labels B int64, distances B float32)."""
        raise NotImplementedError

    def start_pass(self, sums: torch.Tensor | None, stats: torch.Tensor) -> None:
        """A Lloyd pass begins that adds into ``sums`` (K x D float64 or None) and ``stats``
        (K + 1 float64: counts, then the objective)."""

    def finish_pass(self, sums: torch.Tensor | None, stats: torch.Tensor) -> None:
        """The pass is over: add whatever is still held per thread into ``sums`` / ``stats``."""

    def accumulate(
        self, x: torch.Tensor, sums: torch.Tensor | None, stats: torch.Tensor
    ) -> torch.Tensor:
        """Assign x (B x D float32) and add it to the pass: each row into ``sums`` (K x D
        float64, skipped when None) at its label, 1 into ``stats[label]`` and its distance into
        ``stats[K]``. Returns the labels (B int64, on x's device)."""
        k = self.k
        lab, dist = self.assign(x)
        if stats.device.type == "cpu":
            lab_np = lab.numpy()
            st = stats.numpy()
            if sums is not None:
                sums.numpy()[...] += chunk_sums(lab_np, x.numpy(), k)
            st[:k] += np.bincount(lab_np, minlength=k)
            st[k] += float(dist.numpy().sum(dtype=np.float64))
            return lab
        lab = lab.to(stats.device)
        if sums is not None:  # per-chunk float32 sums in one reused K x D buffer
            part = self._part
            if part is None or part.shape != (k, x.shape[1]) or part.device != x.device:
                part = self._part = torch.empty((k, x.shape[1]), device=x.device)
            sums += part.zero_().index_add_(0, lab, x)
        stats[:k] += torch.bincount(lab, minlength=k)
        stats[k] += dist.to(stats.device).sum(dtype=torch.float64)
        return lab


class TorchAssigner(Assigner):
    """Nearest centroid by GEMM, block by block into one reused score buffer (CPU or GPU)."""

    def __init__(self, spherical: bool, block_elems: int | None = None) -> None:
        self.spherical = spherical
        self.block_elems = block_elems
        self._buf: torch.Tensor | None = None

    def set_centroids(self, C: torch.Tensor) -> None:
        """Use the K x D float32 centroids C (on the device the rows will come on)."""
        self.k = int(C.shape[0])
        self.ct = C.T.contiguous()
        self.neg_half_norm = -0.5 * (C * C).sum(1)

    def block_rows(self, device: torch.device) -> int:
        """Rows per GEMM block: ``block_elems`` (default 2^20 on CPU, 2^25 on GPU) // K."""
        elems = self.block_elems
        if elems is None:
            elems = _CPU_BLOCK_ELEMS if device.type == "cpu" else _GPU_BLOCK_ELEMS
        return max(1, elems // self.k)

    def _scores(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        buf = self._buf
        need = rows * self.k
        if buf is None or buf.numel() < need or buf.device != like.device:
            buf = self._buf = torch.empty(need, dtype=torch.float32, device=like.device)
        return buf[:need].view(rows, self.k)

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x D float32 -> (labels B int64, distances B float32), on x's device."""
        n = int(x.shape[0])
        step = self.block_rows(x.device)
        labels = torch.empty(n, dtype=torch.int64, device=x.device)
        best = torch.empty(n, dtype=torch.float32, device=x.device)
        full = self._scores(min(step, n), x)
        for a in range(0, n, step):
            b = min(a + step, n)
            scores = full if b - a == full.shape[0] else self._scores(b - a, x)
            if self.spherical:
                torch.mm(x[a:b], self.ct, out=scores)
            else:
                torch.addmm(self.neg_half_norm, x[a:b], self.ct, out=scores)
            torch.max(scores, 1, out=(best[a:b], labels[a:b]))
        if self.spherical:
            return labels, best.neg_().add_(1.0)
        sq = torch.einsum("ij,ij->i", x, x)
        return labels, sq.sub_(best, alpha=2.0).clamp_min_(0.0)


class FaissAssigner(Assigner):
    """Nearest centroid from a flat faiss index (exact search, k=1); CPU tensors in and out."""

    def __init__(self, spherical: bool, gpu: bool) -> None:
        self.faiss = import_faiss()
        self.spherical = spherical
        self.gpu = gpu
        self.index: Any = None
        self._res: Any = None

    def set_centroids(self, C: torch.Tensor) -> None:
        """Index the K x D float32 centroids C."""
        faiss = self.faiss
        self.k = int(C.shape[0])
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


def nearest_centroid(
    X: Any, centroids: np.ndarray, *, spherical: bool = False, chunk_size: int = 16384
) -> np.ndarray:
    """Nearest of ``centroids`` (K x D) for each row of X (N x D: array, memmap, tensor, path):
    N int64, by squared distance, or by cosine when ``spherical`` (rows L2-normalised first).

    Read ``chunk_size`` rows at a time on CPU; non-finite rows raise :class:`DataError`.
    """
    rows = RawRows(X)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    if rows.d != c.shape[1]:
        raise DataError(f"X has {rows.d} features but the centroids have {c.shape[1]}")
    cpu = torch.device("cpu")
    src = RowSource.of_rows(rows, 0, rows.n, chunk_size, cpu)
    validate_rows(src, 0, spherical, cpu)
    if spherical:
        src.transform = normalise_rows
    assigner = TorchAssigner(spherical)
    assigner.set_centroids(c)
    out = np.empty(rows.n, dtype=np.int64)
    for a, x in src.chunks():
        out[a : a + x.shape[0]] = assigner.assign(x.cpu())[0].numpy()
    return out


# --------------------------------------------------------------------------------------------
# The fused CPU path
# --------------------------------------------------------------------------------------------


@functools.cache
def _kernel() -> Callable[..., float]:
    """The numba kernel (compiled on first use, cached on disk)."""
    import numba

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def scan(g, x, xx, cn, spherical, count, add_rows, labels, dists, sums, counts, best, near):  # type: ignore[no-untyped-def]
        # g: K x B, g[j, i] = -2 x_i·c_j (plain) or -x_i·c_j (spherical); cn: K (||c||² or 0);
        # xx: B, ||x_i||² (plain; from the vectorised _norms_kernel, not a serial sum here) or
        # 1s.
        # best (B float32) and near (B int32) are scratch: the running minimum and its index,
        # both 32-bit so that the compare-and-select runs 16 rows to a 512-bit vector.
        k, b = g.shape
        d = x.shape[1]
        c0 = cn[0]
        for i in range(b):
            best[i] = c0 + g[0, i]
            near[i] = 0
        for j in range(1, k):
            c = cn[j]
            for i in range(b):
                v = c + g[j, i]
                if v < best[i]:
                    best[i] = v
                    near[i] = j
        obj = 0.0
        for i in range(b):
            dist = xx[i] + best[i]
            if not spherical:
                dist = max(dist, np.float32(0.0))
            dists[i] = dist
            obj += dist
            lab = near[i]
            labels[i] = lab
            if count:
                counts[lab] += 1
            if add_rows:
                row = sums[lab]
                xi = x[i]
                for t in range(d):
                    row[t] += xi[t]
        return obj

    return scan  # type: ignore[no-any-return]


@functools.cache
def _norms_kernel() -> Callable[..., None]:
    """``out[i] = ||x_i||²`` for a B x D float32 block (compiled on first use, cached on disk).

    Compiled with ``fastmath`` so that the sum over D is vectorised (reassociated over several
    accumulators): 3x faster than ``np.einsum("ij,ij->i")`` on a 1024 x 256 block, the same
    figure within float32 rounding. The scan kernel stays without it, so that its comparisons
    keep their exact IEEE meaning."""
    import numba

    @numba.njit(nogil=True, cache=True, boundscheck=False, fastmath=True)
    def row_norms(x, out):  # type: ignore[no-untyped-def]
        for i in range(x.shape[0]):
            acc = np.float32(0.0)
            xi = x[i]
            for t in range(x.shape[1]):
                acc += xi[t] * xi[t]
            out[i] = acc

    return row_norms  # type: ignore[no-any-return]


@functools.cache
def _grouped_sums_kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    """``group(labels, starts, order)`` and ``add_groups(x, order, starts, k0, k1, sums)``
    (numba; compiled on first use, cached on disk): the centroid sums of a chunk after its
    assignment, for centroid matrices too large to keep one float64 copy per worker.

    ``group`` is a counting sort: ``starts`` (K + 1 int64, zeros on entry) becomes the offsets
    of each label's rows in ``order`` (B int64), which lists the rows label by label, ascending
    within a label. ``add_groups`` adds the rows of clusters ``k0 .. k1-1`` into their rows of
    ``sums`` (K x D float64), each cluster's rows in row order: workers given disjoint ranges of
    clusters write disjoint rows, and the sums do not depend on the number of workers."""
    import numba

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def group(labels, starts, order):  # type: ignore[no-untyped-def]
        for i in range(labels.shape[0]):
            starts[labels[i] + 1] += 1
        for c in range(1, starts.shape[0]):
            starts[c] += starts[c - 1]
        pos = starts[:-1].copy()
        for i in range(labels.shape[0]):
            lab = labels[i]
            order[pos[lab]] = i
            pos[lab] += 1

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def add_groups(x, order, starts, k0, k1, sums):  # type: ignore[no-untyped-def]
        d = x.shape[1]
        for c in range(k0, k1):
            row = sums[c]
            for p in range(starts[c], starts[c + 1]):
                xi = x[order[p]]
                for t in range(d):
                    row[t] += xi[t]

    return group, add_groups


_GROUPED_SUMS_ELEMS = 1 << 18
"""From K x D = 2^18 (a 2 MiB float64 copy of the sums per worker, more than a core's share of
the cache), several workers leave the sums of a chunk to :func:`_grouped_sums_kernels`: no
per-worker copy to zero and add up, and no row added into a sums matrix outside the cache."""


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """The worker pool of this process (a forked child gets its own: threads do not fork)."""
    key = (os.getpid(), n_threads)
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(n_threads, "kmeans-assign")
        return pool


def fused_task_rows(k: int, d: int = 0, n: int = 0, threads: int = 1) -> int:
    """Rows per task of the fused assignment.

    The power of two at or below 2^21 / K, in [256, 2048]: an 8 MiB or smaller block of scores.
    Each task's GEMM packs the whole K x D centroid matrix again, so longer tasks amortise that
    copy; on the 2-core reference machine that mostly outweighs keeping the block in a core's
    2 MiB cache (``benchmarks/kernels.py``: an assignment pass at K=1000, D=128 takes 0.94-0.97x
    the time with 2048-row tasks as with 512-row ones; at D=512 0.95x on one thread but 1.0-1.05x
    on two; at K=256 the length moves it by at most 3 %). From
    8 MiB of centroids (K·D >= 2^21) tasks take at least 1024 rows. With ``n`` rows to share
    among ``threads`` workers, tasks shrink (not below 256) until there are at least 4 per
    worker.
    """
    target = (1 << 21) // max(k, 1)
    rows = 1 << (target.bit_length() - 1) if target > 0 else 1
    rows = int(min(2048, max(256, rows)))
    if k * d >= 1 << 21:
        rows = max(rows, 1024)
    while n and rows > 256 and -(-n // rows) < 4 * threads:
        rows //= 2
    return rows


class FusedAssigner(Assigner):
    """Cache-blocked, multi-threaded assignment fused with the centroid update (CPU, numba).

    ``n_threads`` workers (default ``torch.get_num_threads()``) take tasks of
    :func:`fused_task_rows` rows in turn; each owns its GEMM buffer, its per-cluster sums
    (float64, K x D) and counts; torch runs single-threaded inside the tasks. Sums of worker 0 go
    straight into the pass's ``sums``; the others are added in :meth:`finish_pass`. From K x D =
    :data:`_GROUPED_SUMS_ELEMS` on several workers, the workers keep no sums: each chunk's rows
    are added after its assignment, grouped by cluster, a range of clusters per worker.

    ``screen`` (:data:`SCREENS`): ``"float32"`` takes the argmin of the float32 GEMM's scores
    (labels exact to its rounding); ``"bfloat16"`` screens with a bfloat16 GEMM and re-checks
    near-ties exactly (:func:`screen_kernels`), dropping to a float32 screen for the rest of a
    pass when the near-ties grow too many (:meth:`_task_screened`); ``"auto"`` chooses by
    :func:`resolve_screen` for each set of centroids (``screen_used``).
    """

    def __init__(
        self,
        spherical: bool,
        n_threads: int | None = None,
        task_rows: int | None = None,
        screen: str = "auto",
    ) -> None:
        self.spherical = spherical
        self.n_threads = n_threads
        self.task_rows = task_rows
        check_screen(screen)
        self.screen = screen
        self.screen_used: str | None = None  # resolved for the K x D centroids by set_centroids
        self._kernel = _kernel()
        self._screen_fns: Any = None
        self._scratch: dict[int, ScreenScratch] = {}  # per worker, kept between chunks
        self._counts_lock = threading.Lock()
        #: The screened path's work since this assigner was made: rows assigned, rows whose
        #: near-ties sent them through all K scores again, exact distances computed, and
        #: tasks screened in float32 after a fallback.
        self.screen_counts = {"rows": 0, "rows_rechecked": 0, "distances": 0, "float32_tasks": 0}
        self._screen_low = False  # this pass still screens in bfloat16 (see _task_screened)
        self._norms = _norms_kernel()
        self._bufs: list[torch.Tensor] = []
        self._parts: list[tuple[np.ndarray, np.ndarray, list[float]]] = []
        self._spare: list[tuple[np.ndarray, np.ndarray, list[float]]] = []

    def set_centroids(self, C: torch.Tensor) -> None:
        """Use the K x D float32 centroids C (CPU)."""
        c = np.asarray(C.detach().cpu().numpy(), dtype=np.float32)
        self.k, self.d = int(c.shape[0]), int(c.shape[1])
        if self.spherical:
            self._cs = torch.from_numpy(np.ascontiguousarray(-c))
            self._cn = np.zeros(self.k, dtype=np.float32)
        else:
            self._cs = torch.from_numpy(np.ascontiguousarray(-2.0 * c, dtype=np.float32))
            self._cn = np.einsum("ij,ij->i", c, c, dtype=np.float32)
        self.screen_used = resolve_screen(self.screen, self.k, self.d)
        if self.screen_used == "bfloat16":
            if self._screen_fns is None:
                self._screen_fns = screen_kernels()
            self._set_screen(c)

    def _set_screen(self, c: np.ndarray) -> None:
        """The screen's centroids: bfloat16 ``-2 (c - mu)`` (plain; mu the centroids' mean, so
        that the rounding error scales with the spread, not with the mean) or ``-c``
        (spherical), their float32 norms and the error-bound constants of both screens."""
        self._c = np.ascontiguousarray(c)
        d = self.d
        if self.spherical:
            mu = np.zeros(d, dtype=np.float32)
            cp = self._c
        else:
            mu = self._c.mean(0, dtype=np.float64).astype(np.float32)
            cp = self._c - mu
        self._mu = mu
        scale = -1.0 if self.spherical else -2.0  # a power of two: exact in bfloat16 too
        self._cs16 = torch.from_numpy(np.ascontiguousarray(cp * scale)).to(torch.bfloat16)
        cn16 = np.einsum("ij,ij->i", cp, cp, dtype=np.float32)
        self._cn16 = np.zeros(self.k, dtype=np.float32) if self.spherical else cn16
        slack = 1.0 + 1e-3  # the float32 norms below are themselves rounded
        bounds = {}
        for low, cn, norms2 in ((True, self._cn16, cn16), (False, self._cn, None)):
            if norms2 is None:
                norms2 = np.einsum("ij,ij->i", self._c, self._c, dtype=np.float32)
            c_max = float(np.sqrt(norms2.max(initial=0.0))) * slack
            cn_max = float(np.abs(cn).max(initial=0.0)) * slack
            a, b, cc = screen_margins(d, self.spherical, low)
            # plus what flushing subnormal products and sums to zero can lose (AMX does)
            tiny = 2.0 * (d + 2) * 2.0**-126
            bounds[low] = (np.float32(a * c_max), np.float32(b * cn_max + tiny), np.float32(cc))
        self._bounds = bounds
        self._screen_low = True

    def _threads(self) -> int:
        return max(1, int(self.n_threads or torch.get_num_threads()))

    def start_pass(self, sums: torch.Tensor | None, stats: torch.Tensor) -> None:
        """Zero the per-thread sums and counts of workers 1.. (worker 0 adds into ``sums``)."""
        del stats
        n = self._threads()
        grouped = self._grouped(sums, n)
        shape = (self.k, self.d) if sums is not None and not grouped else (0, self.d)
        kept = [p[0] for p in self._parts + self._spare if p[0].shape == shape]
        self._parts = []
        for i in range(n - 1):
            s = kept[i] if i < len(kept) else np.empty(shape)
            s.fill(0.0)
            self._parts.append((s, np.zeros(self.k, dtype=np.int64), [0.0]))

    def _grouped(self, sums: torch.Tensor | None, n_threads: int) -> bool:
        """Whether the sums are formed after each chunk's assignment, cluster range by cluster
        range (:data:`_GROUPED_SUMS_ELEMS`), rather than by each worker as it goes."""
        return sums is not None and n_threads > 1 and self.k * self.d >= _GROUPED_SUMS_ELEMS

    def finish_pass(self, sums: torch.Tensor | None, stats: torch.Tensor) -> None:
        """Add the sums, counts and objective held by workers 1.. into the pass."""
        st = stats.numpy()
        for s, c, obj in self._parts:
            if sums is not None and s.shape[0]:
                sums.numpy()[...] += s
            st[: self.k] += c
            st[self.k] += obj[0]
        self._spare, self._parts = self._parts, []  # their buffers serve the next pass

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x D float32 (CPU) -> (labels B int64, distances B float32)."""
        labels, dists, _ = self._run(x, None, None)
        return torch.from_numpy(labels), torch.from_numpy(dists)

    def accumulate(
        self, x: torch.Tensor, sums: torch.Tensor | None, stats: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`Assigner.accumulate` (CPU tensors)."""
        labels, _, _ = self._run(x, sums, stats)
        return torch.from_numpy(labels)

    def _run(
        self, x: torch.Tensor, sums: torch.Tensor | None, stats: torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        xn = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        n, k = int(xn.shape[0]), self.k
        rows = self.task_rows or fused_task_rows(k, self.d, n, self._threads())
        labels = np.empty(n, dtype=np.int64)
        dists = np.empty(n, dtype=np.float32)
        accumulate = stats is not None
        n_tasks = -(-n // rows)
        n_threads = min(self._threads(), n_tasks)
        while len(self._bufs) < n_threads:
            self._bufs.append(torch.empty(0, dtype=torch.float32))
        for t in range(n_threads):
            if self._bufs[t].numel() < rows * k:
                self._bufs[t] = torch.empty(rows * k, dtype=torch.float32)
        st0 = stats.numpy() if stats is not None else None
        grouped = accumulate and self._grouped(sums, self._threads())
        per_worker = sums is not None and not grouped  # each worker adds its rows as it goes
        if accumulate:
            while len(self._parts) < n_threads - 1:
                s = np.zeros((self.k, self.d) if per_worker else (0, self.d))
                self._parts.append((s, np.zeros(self.k, dtype=np.int64), [0.0]))
        own: list[tuple[np.ndarray, np.ndarray, list[float]]] = []
        for t in range(n_threads):
            if t == 0 or not accumulate:
                s = sums.numpy() if (per_worker and t == 0) else np.zeros((0, self.d))
                own.append((s, np.zeros(k, dtype=np.int64), [0.0]))
            else:
                own.append(self._parts[t - 1])
        tasks = itertools.count()
        kernel, cs, cn, spherical = self._kernel, self._cs, self._cn, self.spherical
        norms_kernel = self._norms
        xt = torch.from_numpy(xn)
        screened = self.screen_used == "bfloat16"

        def work(t: int) -> None:
            # This worker's GEMMs run on one thread (torch's MKL, faster than numpy's OpenBLAS
            # at these shapes); the caller's thread count is restored after the pass.
            torch.set_num_threads(1)
            buf = self._bufs[t]
            s, c, obj = own[t]
            add_rows = accumulate and s.shape[0] > 0
            best = np.empty(rows, dtype=np.float32)
            near = np.empty(rows, dtype=np.int32)
            norms = np.ones(rows, dtype=np.float32)  # spherical: the distance is 1 - x·c
            scratch = self._worker_scratch(t, rows) if screened else None
            while True:
                i = next(tasks)
                if i >= n_tasks:
                    return
                a = i * rows
                b = min(a + rows, n)
                xb = xn[a:b]
                g = buf[: k * (b - a)].view(k, b - a)
                if scratch is not None:
                    s_args = (s, c, accumulate, add_rows, labels[a:b], dists[a:b])
                    obj[0] += self._task_screened(xb, xt[a:b], g, scratch, *s_args)
                    continue
                torch.mm(cs, xt[a:b].T, out=g)
                xx = norms[: b - a]
                if not spherical:
                    norms_kernel(xb, xx)
                obj[0] += kernel(
                    g.numpy(),
                    xb,
                    xx,
                    cn,
                    spherical,
                    accumulate,
                    add_rows,
                    labels[a:b],
                    dists[a:b],
                    s,
                    c,
                    best,
                    near,
                )

        previous = torch.get_num_threads()
        try:
            if n_threads == 1:
                work(0)
            else:
                list(_pool(n_threads).map(work, range(n_threads)))
        finally:
            torch.set_num_threads(previous)  # MKL's count is process-wide: give it back
        if grouped and sums is not None:
            self._add_grouped(xn, labels, sums.numpy(), n_threads)
        total = 0.0
        for t, (_, c, obj) in enumerate(own):
            if st0 is not None and (t == 0 or not accumulate):
                st0[:k] += c
                st0[k] += obj[0]
            total += obj[0]
        return labels, dists, total

    def _worker_scratch(self, t: int, rows: int) -> ScreenScratch:
        """Worker t's screen buffers for tasks of ``rows`` rows (made again when they change)."""
        sc = self._scratch.get(t)
        if sc is None or sc.shape != (rows, self.d, self.k):
            sc = self._scratch[t] = ScreenScratch(rows, self.d, self.k)
        return sc

    def _task_screened(
        self,
        xb: np.ndarray,
        xt: torch.Tensor,
        g: torch.Tensor,
        scratch: ScreenScratch,
        sums: np.ndarray,
        counts: np.ndarray,
        count: bool,
        add_rows: bool,
        labels: np.ndarray,
        dists: np.ndarray,
    ) -> float:
        """One task of the screened path: the bfloat16 screen while this pass keeps it, else
        the float32 one, then the exact re-check (:func:`screen_kernels`). Returns its
        objective.

        A pass drops to the float32 screen when a task's re-checks cost more than about half
        its float32 GEMM would (``rows re-checked · K + (distances - B) · D / 4 > B·K·D / 200``,
        a rough count of nanoseconds on a core; every row computes one distance either way):
        data without cluster structure leaves many near-ties that the coarse screen cannot
        separate. The labels do not depend on it."""
        assert self._screen_fns is not None
        center_round, screen = self._screen_fns
        nb = xb.shape[0]
        k, d = self.k, self.d
        sc = scratch
        low = self._screen_low
        if low:
            x16 = sc.x16[:nb]
            center_round(xb, self._mu, x16, sc.rn[:nb])
            g16 = sc.g16[: k * nb].view(k, nb)
            torch.mm(self._cs16, torch.from_numpy(x16).view(torch.bfloat16).T, out=g16)
            g16_bits, g32, cn = bits(g16), sc.none32, self._cn16
        else:
            torch.mm(self._cs, xt.T, out=g)
            rn = sc.rn[:nb]
            self._norms(xb, rn)
            np.sqrt(rn, out=rn)
            g16_bits, g32, cn = sc.none16, g.numpy(), self._cn
        a, b, cc = self._bounds[low]
        obj, n_checked, n_dist = screen(
            g16_bits, g32, xb, self._c, cn, sc.rn[:nb], a, b, cc, self.spherical, count,
            add_rows, labels, dists, sums, counts, sc.m1, sc.m2, sc.m3, sc.near, sc.near2, sc.ev,
            sc.flagged,
            sc.lim, sc.wide,
        )  # fmt: skip
        if low and n_checked * k + (n_dist - nb) * d / 4 > nb * k * d / 200:
            self._screen_low = False
        with self._counts_lock:
            counts_ = self.screen_counts
            counts_["rows"] += nb
            counts_["rows_rechecked"] += int(n_checked)
            counts_["distances"] += int(n_dist)
            counts_["float32_tasks"] += 0 if low else 1
        return float(obj)

    def _add_grouped(
        self, xn: np.ndarray, labels: np.ndarray, sums: np.ndarray, n_threads: int
    ) -> None:
        """Add the rows of ``xn`` (B x D) into ``sums`` (K x D float64) by ``labels``: grouped
        by label, then each worker adds a range of clusters holding about B / n_threads rows."""
        group, add_groups = _grouped_sums_kernels()
        k = self.k
        starts = np.zeros(k + 1, dtype=np.int64)
        order = np.empty(len(labels), dtype=np.int64)
        group(labels, starts, order)
        cuts = np.searchsorted(starts, np.linspace(0, len(labels), n_threads + 1)[1:-1])
        bounds = [0, *(int(c) for c in cuts), k]
        ranges = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
        if len(ranges) == 1:
            add_groups(xn, order, starts, 0, k, sums)
            return
        jobs = [
            _pool(n_threads).submit(add_groups, xn, order, starts, a, b, sums) for a, b in ranges
        ]
        for job in jobs:
            job.result()
