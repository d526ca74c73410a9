"""Prototype clustering (ClusterFit App. A): per-label means, one assignment step, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterfit.cluster import prototype_clusters
from clusterfit.errors import DataError


def test_prototypes_by_hand():
    X = np.array([[0, 0], [2, 0], [10, 10], [12, 10], [4, 1], [1, 0.5]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1, -1])
    # means: label 0 -> (1, 0); label 1 -> (26/3, 7)
    a, c = prototype_clusters(X, labels, spherical=False)
    np.testing.assert_allclose(c, [[1, 0], [26 / 3, 7]], rtol=1e-6)
    # the one assignment step moves item 4 (labelled 1) to prototype 0, and places item 5
    np.testing.assert_array_equal(a, [0, 0, 1, 1, 0, 0])
    assert a.dtype == np.int64 and c.dtype == np.float32


def test_prototypes_spherical_by_hand():
    X = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, -5.0]])
    labels = np.array([7, 7, 9, 9])  # ids follow the sorted labels: 7 -> 0, 9 -> 1
    a, c = prototype_clusters(X, labels, spherical=True)
    s = np.sqrt(0.5)
    m7 = np.array([0.5, 0.5]) / np.linalg.norm([0.5, 0.5])  # mean of (1,0), (0,1)
    m9 = np.array([s, s - 1]) / np.linalg.norm([s, s - 1])  # mean of (s,s), (0,-1)
    np.testing.assert_allclose(c, [m7, m9], atol=1e-6)
    xn = X.numpy() / np.linalg.norm(X.numpy(), axis=1, keepdims=True)
    np.testing.assert_array_equal(a, (xn @ c.T).argmax(1))


def test_prototype_errors():
    X = np.zeros((4, 2), np.float32)
    with pytest.raises(DataError, match="every label is -1"):
        prototype_clusters(X, np.full(4, -1))
    with pytest.raises(DataError, match="all-zero"):
        prototype_clusters(X, np.array([0, 0, 1, 1]), spherical=True)
    with pytest.raises(DataError, match="labels has 3"):
        prototype_clusters(X, np.array([0, 0, 1]))
