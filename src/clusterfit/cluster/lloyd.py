"""Lloyd's algorithm for k-means, in pieces (ClusterFit §3 clustering step).

:func:`kmeans_plus_plus` seeds, :func:`lloyd_pass` assigns every row once (through an
:class:`~clusterfit.cluster.assign.Assigner`) and sums the rows per cluster, and
:func:`update_centroids` turns the sums into new centroids, re-seeding empty clusters faiss-style:
the centroid of a cluster chosen with probability proportional to its size (minus one) is copied,
and the two copies are pushed apart by a relative :data:`SPLIT_EPS` with alternating signs per
dimension. Sums, counts and objectives are all-reduced under torch.distributed, so every rank
holds the same centroids. :func:`faiss_kmeans` runs ``faiss.Kmeans`` itself (every point used),
the reference of the benchmarks.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from clusterfit import distributed as cfdist
from clusterfit.cluster.assign import Assigner, import_faiss
from clusterfit.cluster.rows import RowSource, gather_rows
from clusterfit.errors import ConfigError

__all__ = ["SPLIT_EPS", "faiss_kmeans", "kmeans_plus_plus", "lloyd_pass", "update_centroids"]

SPLIT_EPS = 1.0 / 1024.0
"""Relative perturbation separating the two halves of a split cluster (as faiss)."""
_UPDATE_BLOCK = 256  # centroid rows per block of the update


def kmeans_plus_plus(
    src: RowSource,
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
    centroids[0] = gather_rows(src, start, first, dim, device)[0]
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
            centroids[j] = gather_rows(src, start, chosen, dim, device)[0]
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


def lloyd_pass(
    src: RowSource,
    assigner: Assigner,
    k: int,
    dim: int,
    device: torch.device,
    accumulate: bool,
    keep_labels: bool,
    sums_buffer: torch.Tensor | None = None,
) -> tuple[np.ndarray | None, np.ndarray, float, np.ndarray | None]:
    """One assignment pass over ``src``: (sums K x dim float64, counts K float64, objective,
    local labels int64), all numpy, with sums, counts and objective summed over ranks.

    ``sums_buffer``: a K x dim float64 tensor on ``device`` to accumulate into (zeroed here;
    on CPU the returned sums are a view of it), reused across passes instead of a fresh one.

    The assigner adds each chunk into the sums and counts (:meth:`Assigner.accumulate`): on CPU
    into numpy-backed tensors, on GPU on the device. Streamed sources read the next chunk while
    this one is assigned (:class:`RowSource`).
    """
    labels = np.empty(src.n, dtype=np.int64) if keep_labels else None
    sums = None
    if accumulate:
        if sums_buffer is not None and sums_buffer.shape == (k, dim):
            sums = sums_buffer.zero_()
        else:
            sums = torch.zeros((k, dim), dtype=torch.float64, device=device)
    stats = torch.zeros(k + 1, dtype=torch.float64, device=device)  # counts, objective
    assigner.start_pass(sums, stats)
    for a, x in src.chunks():
        lab = assigner.accumulate(x, sums, stats)
        if labels is not None:
            labels[a : a + lab.shape[0]] = lab.cpu().numpy()
    assigner.finish_pass(sums, stats)
    if sums is not None:
        cfdist.all_reduce_sum(sums)
    cfdist.all_reduce_sum(stats)
    stats_np = stats.cpu().numpy()
    sums_out = sums.cpu().numpy() if sums is not None else None
    return sums_out, stats_np[:k], float(stats_np[k]), labels


def update_centroids(
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
    Without empty clusters the means are formed block by block of rows (no K x D float64
    temporaries: at K=4096, D=2048 they cost as much as a tenth of a Lloyd pass).
    """
    assert sums is not None
    nonempty = counts > 0
    if nonempty.all():
        out = np.empty(sums.shape, dtype=np.float32)
        for a in range(0, sums.shape[0], _UPDATE_BLOCK):
            block = sums[a : a + _UPDATE_BLOCK] / counts[a : a + _UPDATE_BLOCK, None]
            if spherical:
                block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            out[a : a + _UPDATE_BLOCK] = block
        return out, 0
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
    faiss = import_faiss()
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
