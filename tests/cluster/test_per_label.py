"""Per-label k-means (ClusterFit §5.2): k_l ∝ √n_l, summing to K; clusters never mix labels."""

from __future__ import annotations

import numpy as np
import pytest

from clusterfit.cluster import KMeans, allocate_clusters, per_label_kmeans
from clusterfit.errors import ConfigError, DataError


def test_allocation_proportional_to_sqrt_size_and_sums_to_k():
    sizes = np.array([10000, 2500, 400, 100, 25])  # √n = 100, 50, 20, 10, 5 (sum 185)
    k = allocate_clusters(sizes, 370)
    np.testing.assert_array_equal(k, [200, 100, 40, 20, 10])  # exactly 2·√n_l
    for total in (5, 17, 100, 999):
        k = allocate_clusters(sizes, total)
        assert k.sum() == total
        assert (k >= 1).all() and (k <= sizes).all()
        # groups not held at a bound (1 or n_l) share one factor c: k_l = c·√n_l up to rounding
        free = (k > 1) & (k < sizes)
        if free.any():
            c = (total - k[~free].sum()) / np.sqrt(sizes[free]).sum()
            assert np.abs(k - c * np.sqrt(sizes))[free].max() < 1.0
            assert (c * np.sqrt(sizes[k == 1]) < 1.0 + 1e-9).all()
            assert (c * np.sqrt(sizes[k == sizes]) > sizes[k == sizes] - 1e-9).all()


def test_allocation_clips_at_one_and_at_n_l():
    sizes = np.array([1, 3, 1000])
    k = allocate_clusters(sizes, 500)
    assert k.sum() == 500
    assert k[0] == 1 and k[1] <= 3
    with pytest.warns(UserWarning, match="at least 1 per label"):
        np.testing.assert_array_equal(allocate_clusters(sizes, 2), [1, 1, 1])
    with pytest.warns(UserWarning, match="at most 1 per item"):
        np.testing.assert_array_equal(allocate_clusters(sizes, 5000), sizes)


def test_per_label_kmeans_assignments_and_centroids():
    rng = np.random.default_rng(0)
    sizes = {0: 400, 1: 100, 2: 25, 5: 1}
    X = rng.standard_normal((sum(sizes.values()) + 6, 4)).astype(np.float32)
    labels = np.concatenate([np.full(n, lab) for lab, n in sizes.items()] + [np.full(6, -1)])
    perm = rng.permutation(len(labels))
    X, labels = X[perm], labels[perm]
    a, cent, info = per_label_kmeans(X, labels, 36, seed=4, n_iter=5, progress=False)
    assert info["labels"] == [0, 1, 2, 5] and info["sizes"] == [400, 100, 25, 1]
    assert info["k"] == allocate_clusters(np.array([400, 100, 25, 1]), 36).tolist()
    assert sum(info["k"]) == 36 == cent.shape[0] and cent.shape == (36, 4)
    assert info["n_unlabelled"] == 6
    for j, lab in enumerate(info["labels"]):
        ids = a[labels == lab]
        lo, hi = info["offsets"][j], info["offsets"][j] + info["k"][j]
        assert ids.min() >= lo and ids.max() < hi  # no cluster mixes labels
        # each label's clusters are a KMeans of its items with seed + j
        if info["k"][j] < info["sizes"][j]:
            km = KMeans(info["k"][j], seed=4 + j, n_iter=5, progress=False)
            km.fit(X[labels == lab])
            np.testing.assert_array_equal(ids - lo, km.labels_)
            np.testing.assert_allclose(cent[lo:hi], km.cluster_centers_, atol=1e-6)
    # unlabelled items go to the nearest of all centroids
    unl = labels == -1
    d2 = ((X[unl, None, :] - cent[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a[unl], d2.argmin(1))


def test_per_label_kmeans_spherical_and_errors():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 3)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 40)
    _, cent, _ = per_label_kmeans(X, labels, 9, spherical=True, n_iter=3, progress=False)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="pca_dim"):
        per_label_kmeans(X, labels, 9, pca_dim=2, progress=False)
    with pytest.raises(DataError, match="labels has 3 items"):
        per_label_kmeans(X, labels[:3], 9, progress=False)
    with pytest.raises(DataError, match="every label is -1"):
        per_label_kmeans(X, np.full(120, -1), 9, progress=False)
    X[7] = np.nan
    with pytest.raises(DataError, match=r"rows \[7\]"):
        per_label_kmeans(X, labels, 9, progress=False)
