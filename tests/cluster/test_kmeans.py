"""KMeans against scikit-learn, faiss and hand computations (ClusterFit §3 clustering step)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA as SkPCA
from sklearn.metrics import adjusted_rand_score, v_measure_score

from clusterfit.cluster import KMeans, faiss_available, faiss_kmeans
from clusterfit.cluster.assign import numba_available
from clusterfit.cluster.kmeans import SPLIT_EPS, _update
from clusterfit.errors import ClusterFitError, ConfigError, DataError

BACKENDS = [
    "torch",
    pytest.param("fused", marks=pytest.mark.skipif(not numba_available(), reason="numba missing")),
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss missing")),
]


def blobs(n=3000, d=10, k=8, std=3.0, seed=0):
    X, y = make_blobs(n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    return X.astype(np.float32), y


def random_rows(X, k, seed=0):
    return X[np.random.default_rng(seed).choice(len(X), k, replace=False)].copy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_sklearn_from_same_init(backend):
    X, _ = blobs(std=6.0)  # overlapping blobs: the iterations matter
    init = random_rows(X, 8)
    ours = KMeans(8, n_iter=12, init=init, backend=backend, progress=False).fit(X)
    ref = SkKMeans(8, init=init, n_init=1, max_iter=12, algorithm="lloyd", tol=0.0).fit(X)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-3)
    assert adjusted_rand_score(ref.labels_, ours.labels_) > 0.999
    # inertia_ is the plain sum of squared distances to the assigned centroid
    hand = ((X - ours.cluster_centers_[ours.labels_]) ** 2).sum()
    assert ours.inertia_ == pytest.approx(float(hand), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_well_separated_blobs(backend):
    X, y = blobs(n=2000, d=6, k=6, std=0.5, seed=1)
    km = KMeans(6, n_iter=10, init="k-means++", backend=backend, seed=3, progress=False)
    labels = km.fit_predict(X)
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)
    assert v_measure_score(y, labels) == pytest.approx(1.0)
    assert labels.dtype == np.int64 and labels.shape == (2000,)
    assert km.cluster_centers_.dtype == np.float32 and km.cluster_centers_.shape == (6, 6)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert km.n_iter_ == 10 and len(km.history_) == 10
    assert {"objective", "n_empty_reseeded", "seconds"} <= set(km.history_[0])


def test_kmeans_plus_plus_seeds_one_centre_per_blob():
    X, y = blobs(n=1200, d=5, k=6, std=0.3, seed=2)
    # n_iter=0: the labels come from the initial centroids alone
    km = KMeans(6, n_iter=0, init="k-means++", backend="torch", seed=5, progress=False).fit(X)
    assert adjusted_rand_score(y, km.labels_) == pytest.approx(1.0)


@pytest.mark.skipif(not faiss_available(), reason="faiss missing")
@pytest.mark.parametrize("spherical", [False, True])
def test_faiss_and_torch_backends_agree(spherical):
    X, _ = blobs(n=2500, d=12, k=10, std=2.0, seed=4)
    kw = dict(n_iter=8, seed=7, spherical=spherical, progress=False, chunk_size=700)
    a = KMeans(10, backend="faiss", **kw).fit(X)
    b = KMeans(10, backend="torch", **kw).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-4)
    np.testing.assert_allclose(
        [h["objective"] for h in a.history_], [h["objective"] for h in b.history_], rtol=1e-5
    )
    assert a.backend_ == "faiss" and b.backend_ == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_spherical_unit_centroids_and_cosine_objective(backend):
    X, _ = blobs(n=1500, d=8, k=5, std=2.0, seed=5)
    km = KMeans(5, n_iter=6, spherical=True, backend=backend, progress=False).fit(X)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, atol=1e-5)
    xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = xn @ km.cluster_centers_.T
    np.testing.assert_array_equal(km.labels_, cos.argmax(1))
    hand = (1.0 - cos[np.arange(len(X)), km.labels_]).sum()
    assert km.inertia_ == pytest.approx(float(hand), rel=1e-4)
    # scaling a row does not change its cluster
    np.testing.assert_array_equal(km.predict(X * 7.5), km.labels_)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_cluster_reseeded_and_counted(backend):
    X, _ = blobs(n=1000, d=4, k=3, std=1.0, seed=6)
    init = random_rows(X, 4)
    init[1] = 1e4  # far from every row: cluster 1 is empty after the first assignment
    km = KMeans(4, n_iter=5, init=init, backend=backend, progress=False).fit(X)
    assert km.history_[0]["n_empty_reseeded"] == 1
    assert km.n_reseeded_ == sum(h["n_empty_reseeded"] for h in km.history_) >= 1
    assert np.bincount(km.labels_, minlength=4).min() > 0  # the split cluster got points
    assert len(np.unique(km.cluster_centers_, axis=0)) == 4


def test_split_copies_a_centroid_and_perturbs_both_symmetrically():
    prev = np.array([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0], [4.0, -5.0, 6.0]], dtype=np.float32)
    sums = np.array([[10.0, 20.0, 30.0], [0.0, 0.0, 0.0], [4.0, -5.0, 6.0]])
    counts = np.array([10.0, 0.0, 1.0])  # a singleton cannot be split
    new, n_split = _update(sums, counts, prev, np.random.default_rng(0), False, SPLIT_EPS)
    assert n_split == 1 and new.dtype == np.float32
    s = np.array([1.0, -1.0, 1.0])  # alternating signs per dimension
    base = np.array([1.0, 2.0, 3.0])  # the mean of cluster 0
    np.testing.assert_allclose(new[1], base * (1 + SPLIT_EPS * s), rtol=1e-6)
    np.testing.assert_allclose(new[0], base * (1 - SPLIT_EPS * s), rtol=1e-6)
    np.testing.assert_allclose(new[2], [4.0, -5.0, 6.0])
    # spherical: the two copies are renormalised
    new, _ = _update(sums, counts, prev, np.random.default_rng(0), True, SPLIT_EPS)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-6)


def test_streaming_refinement_on_memmap_equals_in_memory(tmp_path):
    X, _ = blobs(n=3001, d=6, k=5, std=2.5, seed=8)
    path = tmp_path / "feats.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    kw = dict(
        n_iter=4,
        subsample=0.3,
        refine_iter=3,
        chunk_size=256,
        backend="torch",
        progress=False,
        seed=2,
    )
    disk = KMeans(5, **kw).fit(mm)
    memory = KMeans(5, **kw).fit(np.array(mm))
    np.testing.assert_array_equal(disk.labels_, memory.labels_)
    np.testing.assert_array_equal(disk.cluster_centers_, memory.cluster_centers_)
    assert disk.inertia_ == memory.inertia_
    phases = [(h["phase"], h["n_points"]) for h in disk.history_]
    assert phases == [("train", 901)] * 4 + [("refine", 3001)] * 3
    refine = [h["objective"] for h in disk.history_[4:]] + [disk.inertia_]
    assert np.all(np.diff(refine) <= 1e-6 * refine[0])  # Lloyd never increases it
    # a path to the .npy file works the same
    np.testing.assert_array_equal(KMeans(5, **kw).fit(str(path)).labels_, disk.labels_)
    # all rows streamed (no subsample) equal all rows in memory
    kw.update(subsample=None)
    np.testing.assert_array_equal(KMeans(5, **kw).fit(mm).labels_, KMeans(5, **kw).fit(X).labels_)


def test_torch_tensor_input_matches_numpy():
    X, _ = blobs(n=800, d=5, k=4, seed=9)
    a = KMeans(4, n_iter=5, backend="torch", progress=False).fit(X)
    b = KMeans(4, n_iter=5, backend="torch", progress=False).fit(torch.from_numpy(X).double())
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-5)


def test_pca_whitening_and_predict_on_raw_rows():
    X, y = blobs(n=2000, d=16, k=4, std=1.0, seed=10)
    km = KMeans(
        4, n_iter=8, pca_dim=5, whiten=True, init="k-means++", backend="torch", progress=False
    ).fit(X)
    assert km.cluster_centers_.shape == (4, 5)
    ref = SkPCA(5).fit(X)
    np.testing.assert_allclose(km.pca_.explained_variance, ref.explained_variance_, rtol=1e-3)
    np.testing.assert_allclose(np.abs(km.pca_.components @ ref.components_.T), np.eye(5), atol=1e-3)
    Z = km.pca_.transform(X)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(Z.std(0, ddof=1), 1.0, rtol=1e-3)  # whitened
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    hand = ((Z - km.cluster_centers_[km.labels_]) ** 2).sum()
    assert km.inertia_ == pytest.approx(float(hand), rel=1e-4)  # objective in PCA space
    assert adjusted_rand_score(y, km.labels_) == pytest.approx(1.0)


def test_faiss_kmeans_uses_every_point_and_warns():
    if not faiss_available():
        pytest.skip("faiss missing")
    X, _ = blobs(n=600, d=3, k=2, seed=11)
    with pytest.warns(UserWarning, match="256"):
        cent, obj = faiss_kmeans(X, 1, n_iter=2)
    np.testing.assert_allclose(cent[0], X.mean(0), atol=1e-4)  # every point in the mean
    assert len(obj) == 2


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (lambda X: X, {"n_clusters": 11}, r"n_clusters=11 .*N=10"),
        (lambda X: X.astype(np.int64), {}, "dtype int64"),
        (lambda X: torch.from_numpy(X).long(), {}, "dtype torch.int64"),
        (lambda X: X[:, 0], {}, "2-D"),
        (lambda X: X[None], {}, "2-D"),
        (lambda X: np.where(np.arange(10)[:, None] == 7, np.nan, X), {}, r"rows \[7\]"),
        (
            lambda X: np.where(np.isin(np.arange(10), [2, 5])[:, None], np.inf, X),
            {},
            r"2 rows with NaN or inf values, e.g. rows \[2, 5\]",
        ),
        (
            lambda X: np.where(np.arange(10)[:, None] == 4, 0.0, X),
            {"spherical": True},
            r"all-zero .* rows \[4\]",
        ),
    ],
)
def test_bad_input_raises_naming_the_problem(make, kwargs, match):
    X = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    params = {"n_clusters": 2, "n_iter": 2, "progress": False, **kwargs}
    with pytest.raises(DataError, match=match):
        KMeans(params.pop("n_clusters"), **params).fit(make(X))


def test_bad_parameters_raise():
    X = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    for kwargs in (
        {"subsample": 0.0},
        {"whiten": True},
        {"init": "kmeans"},
        {"backend": "gpu"},
        {"n_iter": -1},
        {"pca_dim": 4},
    ):
        with pytest.raises(ConfigError):
            KMeans(3, progress=False, **kwargs).fit(X)
    with pytest.raises(DataError, match="fewer than n_clusters"):
        KMeans(20, subsample=10, progress=False).fit(X)
    with pytest.raises(DataError, match="expected"):
        KMeans(3, init=np.zeros((2, 3)), progress=False).fit(X)
    km = KMeans(3, n_iter=1, progress=False).fit(X)
    with pytest.raises(ClusterFitError, match="4 features"):
        km.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(ClusterFitError, match="not fitted"):
        KMeans(3).predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KMeans(3, n_iter=1, subsample=50, progress=False).fit(X)  # exactly N: no warning


def test_memmap_reading_paths_agree(tmp_path):
    """Whole .npy memmaps are read with pread (any dtype / byte order), views through the map."""
    X, _ = blobs(n=1200, d=5, k=4, seed=12)
    path = tmp_path / "be.npy"
    np.save(path, X.astype(">f8"))
    mm = np.load(path, mmap_mode="r")
    kw = dict(
        n_iter=3, subsample=500, refine_iter=1, chunk_size=100, backend="torch", progress=False
    )
    ref = KMeans(4, **kw).fit(np.asarray(mm, dtype=np.float32))
    np.testing.assert_array_equal(KMeans(4, **kw).fit(mm).labels_, ref.labels_)
    view = KMeans(4, **kw).fit(mm[100:])  # a view of the map: read through the mapping
    np.testing.assert_array_equal(view.labels_, KMeans(4, **kw).fit(X[100:]).labels_)
    np.testing.assert_array_equal(ref.predict(mm), ref.labels_)


def test_row_checks_do_not_trip_on_overflowing_or_tiny_rows():
    from clusterfit.cluster.kmeans import _bad_rows

    x = np.ones((12, 4), dtype=np.float32)
    x[2, 1] = 3e20  # finite, but its squared norm overflows float32
    x[4, 0] = np.nan
    x[6, 3] = -np.inf
    x[8] = 0.0
    x[10] = 1e-30  # non-zero, but its squared norm underflows
    nonfinite, zero = _bad_rows(torch.from_numpy(x), spherical=True)
    np.testing.assert_array_equal(nonfinite, [4, 6])
    np.testing.assert_array_equal(zero, [8])
