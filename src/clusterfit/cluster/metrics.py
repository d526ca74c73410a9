"""Summary statistics of a clustering (ClusterFit §3 / §5: cluster quality and balance).

:func:`cluster_stats` returns a JSON-able dict, written as ``clusters/stats.json`` by the cluster
stage. Definitions:

* ``imbalance``: ``K · Σ_k n_k² / N²`` (faiss's imbalance factor): 1.0 when every cluster has
  N / K items, K when all items are in one cluster.
* ``size_histogram``: counts of clusters per size bin; bins are ``[0, 0]`` (empty), then powers
  of two ``[1, 1]``, ``[2, 3]``, ``[4, 7]``, ... up to the largest cluster.
* ``nmi``: normalised mutual information (arithmetic mean normalisation, scikit-learn's default),
  ``ari``: adjusted Rand index, ``purity``: ``Σ_k max_l n_kl / N`` -- all against the known labels,
  ignoring items whose label is -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clusterfit.errors import DataError

__all__ = ["cluster_stats", "imbalance_factor", "purity"]


def imbalance_factor(sizes: np.ndarray) -> float:
    """``K · Σ n_k² / N²`` for cluster sizes ``sizes`` (K ints); 1.0 = perfectly balanced."""
    sizes = np.asarray(sizes, dtype=np.float64)
    n = sizes.sum()
    if n <= 0:
        return float("nan")
    return float(len(sizes) * np.square(sizes).sum() / (n * n))


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """``Σ_k max_l n_kl / N``: the fraction of items whose label is their cluster's majority label.

    assignments, labels: N ints each (all labels known).
    """
    assignments = np.asarray(assignments)
    labels = np.asarray(labels)
    if len(assignments) == 0:
        return float("nan")
    _, a = np.unique(assignments, return_inverse=True)
    _, lab = np.unique(labels, return_inverse=True)
    n_lab = int(lab.max()) + 1
    table = np.bincount(a * n_lab + lab, minlength=(int(a.max()) + 1) * n_lab)
    table = table.reshape(-1, n_lab)
    return float(table.max(1).sum() / len(assignments))


def _size_histogram(sizes: np.ndarray) -> list[dict[str, int]]:
    bins = [{"min": 0, "max": 0, "count": int((sizes == 0).sum())}]
    top = int(sizes.max()) if len(sizes) else 0
    lo = 1
    while lo <= max(top, 1):
        hi = 2 * lo - 1
        bins.append({"min": lo, "max": hi, "count": int(((sizes >= lo) & (sizes <= hi)).sum())})
        lo *= 2
    return bins


def cluster_stats(
    assignments: np.ndarray,
    n_clusters: int,
    *,
    labels: np.ndarray | None = None,
    history: Sequence[dict[str, Any]] | None = None,
    n_reseeded: int = 0,
) -> dict[str, Any]:
    """Statistics of a clustering of N items into ``n_clusters`` clusters (a JSON-able dict).

    assignments: N ints in [0, n_clusters). labels: N ints (-1 = unknown) or None.
    history: ``KMeans.history_`` (per-iteration dicts with an ``objective``) or None.

    Keys: n_items, n_clusters, objective (list, one per iteration), final_objective (last of
    those, or None), sizes {min, median, max, mean}, size_histogram, imbalance, n_empty (final),
    n_reseeded; with labels: n_labelled, nmi, ari, purity (None when no item is labelled).
    """
    a = np.asarray(assignments).reshape(-1)
    if a.size and a.dtype.kind not in "iu":
        raise DataError(f"assignments must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    k = int(n_clusters)
    if k < 1:
        raise DataError(f"n_clusters must be >= 1, got {n_clusters}")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise DataError(f"assignments must lie in [0, {k}); found values in [{a.min()}, {a.max()}]")
    sizes = np.bincount(a, minlength=k)
    objective = [float(h["objective"]) for h in history] if history else []
    stats: dict[str, Any] = {
        "n_items": int(a.size),
        "n_clusters": k,
        "objective": objective,
        "final_objective": objective[-1] if objective else None,
        "sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "mean": float(sizes.mean()),
        },
        "size_histogram": _size_histogram(sizes),
        "imbalance": imbalance_factor(sizes),
        "n_empty": int((sizes == 0).sum()),
        "n_reseeded": int(n_reseeded),
    }
    if labels is not None:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != a.shape[0]:
            raise DataError(f"labels has {lab.shape[0]} items but assignments has {a.shape[0]}")
        known = lab != -1
        stats["n_labelled"] = int(known.sum())
        if known.any():
            stats["nmi"] = float(normalized_mutual_info_score(lab[known], a[known]))
            stats["ari"] = float(adjusted_rand_score(lab[known], a[known]))
            stats["purity"] = purity(a[known], lab[known])
        else:
            stats["nmi"] = stats["ari"] = stats["purity"] = None
    return stats
