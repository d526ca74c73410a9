"""Prototype clustering: per-label mean features as centres (ClusterFit App. A).

Instead of k-means, each label's centre is the mean feature of its items, and every item
(labelled or not) is assigned to its nearest centre in one assignment step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from clusterfit.cluster.assign import TorchAssigner, nearest_centroid
from clusterfit.cluster.rows import RawRows, RowSource, normalise_rows, validate_rows
from clusterfit.errors import ConfigError, DataError

__all__ = ["PrototypeClustering", "prototype_clusters"]


def prototype_clusters(
    X: Any, labels: np.ndarray, *, spherical: bool = False, chunk_size: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Centres = per-label means of X; one assignment step (ClusterFit App. A).

    X: N x D float (numpy, memmap, tensor), read in chunks. labels: N ints, -1 = unknown (such
    items get a centre but define none). spherical: rows are L2-normalised first, the centres are
    the normalised means and assignment is by cosine.

    Returns (assignments N int64, centroids L x D float32) where centroid j is the mean of label
    ``np.unique(labels[labels >= 0])[j]`` -- so cluster id == label when the labels are 0..L-1.
    """
    rows = RawRows(X)
    lab = np.asarray(labels).reshape(-1)
    if lab.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.shape[0] != rows.n:
        raise DataError(f"labels has {lab.shape[0]} items but X has {rows.n} rows")
    known = lab >= 0
    if not known.any():
        raise DataError("prototype clustering needs labelled items; every label is -1")
    values, index = np.unique(lab[known], return_inverse=True)
    group = np.full(rows.n, -1, dtype=np.int64)
    group[known] = index
    n_proto = len(values)

    cpu = torch.device("cpu")
    src = RowSource.of_rows(rows, 0, rows.n, chunk_size, cpu)
    validate_rows(src, 0, spherical, cpu)
    if spherical:
        src.transform = normalise_rows
    sums = torch.zeros((n_proto, rows.d), dtype=torch.float64)
    for a, x in src.chunks():
        g = torch.from_numpy(group[a : a + x.shape[0]])
        keep = g >= 0
        sums.index_add_(0, g[keep], x[keep].double())
    counts = torch.from_numpy(np.bincount(index, minlength=n_proto)).double()
    centroids = sums / counts[:, None]
    if spherical:
        centroids = normalise_rows(centroids)
    centroids = centroids.float()

    assigner = TorchAssigner(spherical)
    assigner.set_centroids(centroids)
    assignments = np.empty(rows.n, dtype=np.int64)
    for a, x in src.chunks():
        assignments[a : a + x.shape[0]] = assigner.assign(x)[0].numpy()
    return assignments, centroids.numpy()


class PrototypeClustering(ClusterMixin, BaseEstimator):
    """Prototype clustering as a scikit-learn estimator (ClusterFit App. A).

    ``fit(X, y)``: the centres are the per-label means of X (N x D; y: N ints, -1 = unknown) and
    every row goes to its nearest centre, as :func:`prototype_clusters`.

    Fitted attributes: ``cluster_centers_`` (L x D float32, centre j of label ``classes_[j]``),
    ``labels_`` (N int64), ``classes_`` (the L labels), ``n_features_in_``.
    """

    def __init__(self, *, spherical: bool = False, chunk_size: int = 16384) -> None:
        self.spherical = spherical
        self.chunk_size = chunk_size

    def fit(self, X: Any, y: np.ndarray) -> PrototypeClustering:
        """Fit on X (N x D) with labels y (N ints, -1 = unknown); returns self."""
        self.labels_, self.cluster_centers_ = prototype_clusters(
            X, y, spherical=self.spherical, chunk_size=self.chunk_size
        )
        lab = np.asarray(y).reshape(-1)
        self.classes_ = np.unique(lab[lab >= 0])
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        return self

    def fit_predict(self, X: Any, y: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Fit, then return ``labels_`` (N int64)."""
        del kwargs
        return self.fit(X, y).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Nearest centre of each row of X (M x D): M int64."""
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this PrototypeClustering is not fitted yet: call fit(X, y) first")
        return nearest_centroid(
            X, self.cluster_centers_, spherical=self.spherical, chunk_size=self.chunk_size
        )
