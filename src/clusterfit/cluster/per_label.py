"""Per-label k-means (ClusterFit §5.2): k-means within each label, k_l ∝ √n_l clusters.

The paper's "label-aware" variant of the clustering step: the items of each label l are
clustered separately into k_l clusters with k_l proportional to √n_l, so that frequent labels get
more (but not proportionally more) clusters; the k_l sum to about K.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from tqdm.auto import tqdm

from clusterfit.cluster.assign import TorchAssigner, nearest_centroid
from clusterfit.cluster.kmeans import KMeans
from clusterfit.cluster.rows import RawRows, RowSource, normalise_rows, validate_rows
from clusterfit.errors import ConfigError, DataError

__all__ = ["PerLabelKMeans", "allocate_clusters", "per_label_kmeans"]


def allocate_clusters(sizes: np.ndarray, n_clusters_total: int) -> np.ndarray:
    """Numbers of clusters k_l per group of ``sizes`` n_l (L ints >= 1): L int64.

    k_l = clip(c·√n_l, 1, n_l) with c chosen so that the k_l sum to K, rounded to integers by
    largest remainders, so Σ k_l = K exactly whenever L <= K <= Σ n_l (otherwise K is clipped to
    that range, with a warning).
    """
    n = np.asarray(sizes, dtype=np.int64)
    if n.ndim != 1 or len(n) == 0 or (n < 1).any():
        raise DataError(f"group sizes must be a non-empty list of ints >= 1, got {sizes!r}")
    k_total = int(n_clusters_total)
    lo, hi = len(n), int(n.sum())
    if not lo <= k_total <= hi:
        warnings.warn(
            f"{k_total} clusters requested for {lo} labels and {hi} items; using "
            f"{min(max(k_total, lo), hi)} (at least 1 per label, at most 1 per item)",
            stacklevel=2,
        )
        k_total = min(max(k_total, lo), hi)
    root = np.sqrt(n.astype(np.float64))

    def quota(c: float) -> np.ndarray:
        return np.clip(c * root, 1.0, n.astype(np.float64))

    c_lo, c_hi = 0.0, float(root.max())
    for _ in range(200):
        mid = 0.5 * (c_lo + c_hi)
        if quota(mid).sum() < k_total:
            c_lo = mid
        else:
            c_hi = mid
    q = quota(c_hi)
    k = np.floor(q + 1e-9).astype(np.int64)
    k = np.clip(k, 1, n)
    missing = k_total - int(k.sum())
    frac = q - k
    while missing > 0:
        for i in np.argsort(-frac, kind="stable"):
            if missing == 0:
                break
            if k[i] < n[i]:
                k[i] += 1
                frac[i] -= 1.0
                missing -= 1
    while missing < 0:
        for i in np.argsort(frac, kind="stable"):
            if missing == 0:
                break
            if k[i] > 1:
                k[i] -= 1
                frac[i] += 1.0
                missing += 1
    return k


def per_label_kmeans(
    X: Any,
    labels: np.ndarray,
    n_clusters_total: int,
    *,
    seed: int = 0,
    progress: bool = True,
    **kmeans_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """k-means within each label into k_l ∝ √n_l clusters (ClusterFit §5.2).

    X: N x D float (numpy, memmap, tensor). labels: N ints; items labelled -1 take part in no
    k-means and are assigned to the nearest of all centroids afterwards. n_clusters_total: K, the
    target Σ k_l (see :func:`allocate_clusters`). kmeans_kwargs go to :class:`KMeans` (e.g.
    ``n_iter``, ``spherical``, ``backend``); label l's k-means uses seed ``seed + l's rank among
    the sorted labels``.

    Returns (assignments N int64 global cluster ids, centroids K' x D float32, info) where the
    clusters of the j-th label are ids ``info["offsets"][j] .. + info["k"][j] - 1`` and info holds
    labels, sizes, k, offsets, inertia (per label), n_reseeded and n_unlabelled.
    """
    if kmeans_kwargs.get("pca_dim") is not None or kmeans_kwargs.get("whiten"):
        raise ConfigError(
            "per_label_kmeans does not take pca_dim / whiten: the centroids of all labels must "
            "share one space (apply a PCA to X first)"
        )
    if not isinstance(kmeans_kwargs.get("init", "random"), str):
        raise ConfigError("per_label_kmeans takes init='random' or 'k-means++', not an array")
    spherical = bool(kmeans_kwargs.get("spherical", False))
    rows = RawRows(X)
    cpu = torch.device("cpu")
    validate_rows(RowSource.of_rows(rows, 0, rows.n, 16384, cpu), 0, spherical, cpu)
    lab = np.asarray(labels).reshape(-1)
    if lab.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.shape[0] != rows.n:
        raise DataError(f"labels has {lab.shape[0]} items but X has {rows.n} rows")
    known = np.nonzero(lab >= 0)[0]
    if len(known) == 0:
        raise DataError("per-label k-means needs labelled items; every label is -1")
    order = known[np.argsort(lab[known], kind="stable")]
    values, starts, sizes = np.unique(lab[order], return_index=True, return_counts=True)
    k_per = allocate_clusters(sizes, n_clusters_total)
    offsets = np.concatenate([[0], np.cumsum(k_per)[:-1]]).astype(np.int64)

    assignments = np.full(rows.n, -1, dtype=np.int64)
    centroids: list[np.ndarray] = []
    inertia: list[float] = []
    n_reseeded = 0
    kwargs = {key: v for key, v in kmeans_kwargs.items() if key != "progress"}
    bar = tqdm(range(len(values)), desc="per-label k-means", disable=not progress, leave=False)
    for j in bar:
        idx = np.sort(order[starts[j] : starts[j] + sizes[j]])
        xl = rows.take(idx)
        kl = int(k_per[j])
        if kl == len(idx):  # one cluster per item
            cent = normalise_rows(xl) if spherical else xl
            assignments[idx] = offsets[j] + np.arange(kl)
            centroids.append(cent.cpu().numpy().astype(np.float32))
            inertia.append(0.0)
            continue
        km = KMeans(kl, seed=seed + j, progress=False, **kwargs).fit(xl)
        assignments[idx] = offsets[j] + km.labels_
        centroids.append(km.cluster_centers_)
        inertia.append(float(km.inertia_))
        n_reseeded += km.n_reseeded_
    all_centroids = np.concatenate(centroids).astype(np.float32)

    unknown = np.nonzero(lab < 0)[0]
    if len(unknown):
        assigner = TorchAssigner(spherical)
        assigner.set_centroids(torch.from_numpy(all_centroids))
        for a in range(0, len(unknown), 16384):
            part = unknown[a : a + 16384]
            x = rows.take(part).cpu()
            if spherical:
                x = normalise_rows(x)
            assignments[part] = assigner.assign(x)[0].numpy()
    info = {
        "labels": values.tolist(),
        "sizes": sizes.tolist(),
        "k": k_per.tolist(),
        "offsets": offsets.tolist(),
        "inertia": inertia,
        "n_reseeded": int(n_reseeded),
        "n_unlabelled": len(unknown),
    }
    return assignments, all_centroids, info


class PerLabelKMeans(ClusterMixin, BaseEstimator):
    """Per-label k-means as a scikit-learn estimator (ClusterFit §5.2).

    ``fit(X, y)``: k-means within each label of y (N ints, -1 = unlabelled) into k_l ∝ √n_l
    clusters summing to ``n_clusters``, as :func:`per_label_kmeans`; the other parameters go to
    each label's :class:`KMeans`.

    Fitted attributes: ``labels_`` (N int64 global cluster ids), ``cluster_centers_`` (K' x D
    float32), ``info_`` (labels, sizes, k, offsets, inertia, n_reseeded, n_unlabelled),
    ``n_features_in_``.
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_iter: int = 20,
        spherical: bool = False,
        seed: int = 0,
        init: str = "random",
        backend: str = "auto",
        screen: str = "auto",
        device: str | torch.device | None = None,
        chunk_size: int | None = None,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.spherical = spherical
        self.seed = seed
        self.init = init
        self.backend = backend
        self.screen = screen
        self.device = device
        self.chunk_size = chunk_size
        self.progress = progress

    def fit(self, X: Any, y: np.ndarray) -> PerLabelKMeans:
        """Fit on X (N x D) with labels y (N ints, -1 = unlabelled); returns self."""
        self.labels_, self.cluster_centers_, self.info_ = per_label_kmeans(
            X,
            y,
            self.n_clusters,
            seed=self.seed,
            progress=self.progress,
            n_iter=self.n_iter,
            spherical=self.spherical,
            init=self.init,
            backend=self.backend,
            screen=self.screen,
            device=self.device,
            chunk_size=self.chunk_size,
        )
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        return self

    def fit_predict(self, X: Any, y: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Fit, then return ``labels_`` (N int64)."""
        del kwargs
        return self.fit(X, y).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Nearest of all clusters for each row of X (M x D): M int64 global cluster ids."""
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this PerLabelKMeans is not fitted yet: call fit(X, y) first")
        return nearest_centroid(X, self.cluster_centers_, spherical=self.spherical)
