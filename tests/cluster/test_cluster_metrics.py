"""cluster_stats against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from clusterfit.cluster import cluster_stats, imbalance_factor, purity
from clusterfit.errors import DataError


def entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_stats_by_hand():
    a = np.array([0, 0, 0, 1, 1, 3])
    labels = np.array([0, 0, 1, 1, 1, -1])
    history = [{"objective": 5.0, "n_empty_reseeded": 1}, {"objective": 3.5}]
    st = cluster_stats(a, 4, labels=labels, history=history, n_reseeded=1)
    json.dumps(st)  # JSON-able
    assert st["n_items"] == 6 and st["n_clusters"] == 4
    assert st["objective"] == [5.0, 3.5] and st["final_objective"] == 3.5
    # sizes 3, 2, 0, 1
    assert st["sizes"] == {"min": 0, "median": 1.5, "max": 3, "mean": 1.5}
    assert st["n_empty"] == 1 and st["n_reseeded"] == 1
    assert st["imbalance"] == pytest.approx(4 * (9 + 4 + 0 + 1) / 36)
    hist = {(b["min"], b["max"]): b["count"] for b in st["size_histogram"]}
    assert hist == {(0, 0): 1, (1, 1): 1, (2, 3): 2}
    # labelled items: clusters {0: [0, 0, 1], 1: [1, 1]} -> purity (2 + 2) / 5
    assert st["n_labelled"] == 5
    assert st["purity"] == pytest.approx(0.8)
    # NMI (arithmetic normalisation) from the contingency table [[2, 1], [0, 2]]
    table = np.array([[2, 1], [0, 2]], dtype=float)
    h_c, h_l = entropy(table.sum(1)), entropy(table.sum(0))
    mi = h_c + h_l - entropy(table.ravel())
    assert st["nmi"] == pytest.approx(mi / ((h_c + h_l) / 2))
    assert st["ari"] == pytest.approx(adjusted_rand_score(labels[:5], a[:5]))


def test_perfect_and_degenerate_cases():
    assert imbalance_factor(np.array([5, 5, 5, 5])) == pytest.approx(1.0)
    assert imbalance_factor(np.array([20, 0, 0, 0])) == pytest.approx(4.0)
    assert purity(np.array([0, 0, 1, 1]), np.array([3, 3, 4, 4])) == 1.0
    st = cluster_stats(np.array([1, 1, 0, 0]), 2, labels=np.array([5, 5, 6, 6]))
    assert st["nmi"] == pytest.approx(1.0) and st["ari"] == pytest.approx(1.0)
    st = cluster_stats(np.array([0, 1]), 2, labels=np.array([-1, -1]))
    assert st["nmi"] is None and st["n_labelled"] == 0
    assert "nmi" not in cluster_stats(np.array([0, 1]), 2)


def test_bad_assignments():
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        cluster_stats(np.array([0, 2]), 2)
    with pytest.raises(DataError, match="integers"):
        cluster_stats(np.array([0.0, 1.0]), 2)
    with pytest.raises(DataError, match="labels has 1"):
        cluster_stats(np.array([0, 1]), 2, labels=np.array([0]))
