"""The assignment backends against brute force; streaming; the estimator shape (ClusterFit §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs

from clusterfit.cluster import (
    KMeans,
    PerLabelKMeans,
    PrototypeClustering,
    assign,
    prototype_clusters,
)
from clusterfit.cluster import rows as rows_mod
from clusterfit.cluster import screen as screen_mod
from clusterfit.cluster.assign import (
    FusedAssigner,
    TorchAssigner,
    fused_task_rows,
    nearest_centroid,
    numba_available,
)
from clusterfit.cluster.rows import RawRows, RowSource
from clusterfit.cluster.screen import resolve_screen, screen_margins
from clusterfit.errors import ConfigError

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba missing")
SCREENS = ("float32", "bfloat16")  # FusedAssigner's GEMMs, both tested on every CPU


def brute_force(x: np.ndarray, c: np.ndarray, spherical: bool):
    """Labels, distances (float64) and the gap to the second-nearest centroid, by numpy."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    dot = x64 @ c64.T
    sq = (x64**2).sum(1)[:, None] - 2.0 * dot + (c64**2).sum(1)[None, :]
    dist = 1.0 - dot if spherical else np.maximum(sq, 0.0)
    order = np.argsort(dist, axis=1, kind="stable")
    rows = np.arange(len(x))
    best = dist[rows, order[:, 0]]
    gap = dist[rows, order[:, 1]] - best if c.shape[0] > 1 else np.full(len(x), np.inf)
    return order[:, 0], best, gap


def sums_by_label(x: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, lab, x.astype(np.float64))
    return sums, np.bincount(lab, minlength=k).astype(np.float64)


def data(n: int, d: int, k: int, spherical: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return x, c


def check_against_brute_force(assigner, x, c, spherical, tol=1e-4):
    assigner.set_centroids(torch.from_numpy(c))
    lab, dist = assigner.assign(torch.from_numpy(x))
    ref_lab, ref_dist, gap = brute_force(x, c, spherical)
    clear = gap > tol * (1.0 + np.abs(ref_dist))  # ties aside
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(lab.numpy()[clear], ref_lab[clear])
    np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-4, atol=1e-3)
    assert float(dist.numpy().sum(dtype=np.float64)) == pytest.approx(ref_dist.sum(), rel=1e-5)
    return lab.numpy()


# (N, D, K): N not a multiple of the task rows, K larger than the task rows, D = 1, K = 1
SHAPES = [(1000, 16, 10), (1537, 8, 700), (777, 1, 5), (300, 33, 1), (2049, 64, 1300)]


@needs_numba
@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("n", "d", "k"), SHAPES)
def test_fused_assignment_equals_brute_force(n, d, k, threads, spherical, screen):
    if spherical and d == 1:
        pytest.skip("one dimension: every unit row is +-1")
    x, c = data(n, d, k, spherical)
    a = FusedAssigner(spherical, n_threads=threads, screen=screen)
    check_against_brute_force(a, x, c, spherical)


@needs_numba
@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("with_sums", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_fused_pass_sums_counts_and_objective(threads, with_sums, grouped, screen, monkeypatch):
    # grouped: the sums formed after each chunk, cluster range by cluster range (the path of
    # large K x D on several workers), here forced at a small size
    if grouped:
        monkeypatch.setattr(assign, "_GROUPED_SUMS_ELEMS", 0)
    x, c = data(3001, 12, 40, False, seed=1)
    k = len(c)
    a = FusedAssigner(False, n_threads=threads, task_rows=256, screen=screen)
    a.set_centroids(torch.from_numpy(c))
    sums = torch.zeros((k, 12), dtype=torch.float64) if with_sums else None
    stats = torch.zeros(k + 1, dtype=torch.float64)
    a.start_pass(sums, stats)
    labels = []
    for s in range(0, len(x), 1000):  # several chunks per pass
        labels.append(a.accumulate(torch.from_numpy(x[s : s + 1000]), sums, stats).numpy())
    a.finish_pass(sums, stats)
    lab = np.concatenate(labels)
    ref_lab, ref_dist, _ = brute_force(x, c, False)
    np.testing.assert_array_equal(lab, ref_lab)
    ref_sums, ref_counts = sums_by_label(x, lab, k)
    np.testing.assert_array_equal(stats.numpy()[:k], ref_counts)
    assert stats.numpy()[k] == pytest.approx(ref_dist.sum(), rel=1e-5)
    if sums is not None:
        np.testing.assert_allclose(sums.numpy(), ref_sums, rtol=1e-9, atol=1e-9)


@needs_numba
def test_grouped_sums_do_not_depend_on_the_worker_count(monkeypatch):
    """Above the size threshold the sums of several workers are grouped by cluster, each
    cluster's rows added in row order: the same bits on 2 and 3 workers, and the per-worker
    sums below the threshold agree to float64 rounding."""
    x, c = data(2000, 64, 300, False, seed=3)
    k, d = c.shape

    def pass_sums(threads: int) -> np.ndarray:
        a = FusedAssigner(False, n_threads=threads, task_rows=256)
        a.set_centroids(torch.from_numpy(c))
        sums = torch.zeros((k, d), dtype=torch.float64)
        stats = torch.zeros(k + 1, dtype=torch.float64)
        a.start_pass(sums, stats)
        a.accumulate(torch.from_numpy(x), sums, stats)
        a.finish_pass(sums, stats)
        assert all(p[0].shape[0] == 0 for p in a._spare) == a._grouped(sums, threads)
        return sums.numpy()

    monkeypatch.setattr(assign, "_GROUPED_SUMS_ELEMS", k * d)
    two, three = pass_sums(2), pass_sums(3)
    np.testing.assert_array_equal(two, three)
    monkeypatch.setattr(assign, "_GROUPED_SUMS_ELEMS", k * d + 1)
    np.testing.assert_allclose(pass_sums(2), two, rtol=1e-12, atol=1e-12)


def exact_argmin(x: np.ndarray, c: np.ndarray, spherical: bool) -> np.ndarray:
    """The nearest centroid by float64 distances formed as the screen's re-check forms them
    (sum of squared differences, or -x·c), first index on exact ties."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    if spherical:
        return np.argmin(-(x64 @ c64.T), axis=1)
    return np.argmin(((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1), axis=1)


def hard_cases(seed: int = 0):
    """(name, x, c, spherical): data on which a coarse screen sees many near-ties."""
    rng = np.random.default_rng(seed)
    out = []
    # no cluster structure: every row nearly equidistant from many centroids
    x = rng.standard_normal((1500, 48)).astype(np.float32)
    c = rng.standard_normal((200, 48)).astype(np.float32) * 0.3
    out.append(("gaussian", x, c, False))
    # a large common offset (post-ReLU-like features) and duplicated centroids (exact ties)
    x = (np.abs(rng.standard_normal((1200, 64))) + 20.0).astype(np.float32)
    c = x[rng.choice(len(x), 90, replace=False)] + 0.01
    c[7] = c[3]
    c[50] = c[3]
    out.append(("offset+duplicates", x, c.astype(np.float32), False))
    # centroids that are rows: distance 0 for some, and a wide dynamic range of norms
    x = (rng.standard_normal((1000, 32)) * np.exp(rng.uniform(-4, 4, (1000, 1)))).astype(np.float32)
    out.append(("rows+scales", x, x[:77].copy(), False))
    # so small that products of coordinates are subnormal floats (flushed to zero by AMX)
    x = (rng.standard_normal((800, 24)) * 3e-20).astype(np.float32)
    c = (rng.standard_normal((60, 24)) * 3e-20).astype(np.float32)
    out.append(("subnormal products", x, c, False))
    xs = rng.standard_normal((1300, 40)).astype(np.float32)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    cs = xs[rng.choice(len(xs), 150, replace=False)] + 0.05 * rng.standard_normal((150, 40))
    cs = (cs / np.linalg.norm(cs, axis=1, keepdims=True)).astype(np.float32)
    cs[9] = cs[4]
    out.append(("spherical", xs, cs, True))
    return out


@needs_numba
@pytest.mark.parametrize("case", range(5))
def test_bfloat16_screen_gives_the_exact_nearest_centroid(case):
    """The bfloat16 screen re-checks every near-tie in float64: each label is the exact nearest
    centroid (first index on exact ties), its distance exact, and neither depends on the worker
    count or the task length."""
    name, x, c, spherical = hard_cases()[case]
    ref = exact_argmin(x, c, spherical)
    runs = []
    for threads, task_rows in ((1, 256), (3, 512), (2, None)):
        a = FusedAssigner(spherical, n_threads=threads, task_rows=task_rows, screen="bfloat16")
        a.set_centroids(torch.from_numpy(c))
        lab, dist = a.assign(torch.from_numpy(x))
        np.testing.assert_array_equal(lab.numpy(), ref, err_msg=name)
        runs.append(dist.numpy())
        assert a.screen_counts["rows"] == len(x)
        assert a.screen_counts["distances"] >= len(x)  # at least the label's own
    x64, c64 = x.astype(np.float64), c[ref].astype(np.float64)
    exact = 1.0 - (x64 * c64).sum(1) if spherical else ((x64 - c64) ** 2).sum(1)
    np.testing.assert_allclose(runs[0], exact, rtol=1e-6, atol=1e-30)
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


@needs_numba
@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("d", [3, 64, 700, 2048])
def test_screen_error_bound_holds_for_torch_bfloat16_gemm(d, spherical):
    """``screen_margins``' bound against the GEMM it bounds: every score of torch's bfloat16
    product (and of its float32 one) lies within the bound of the exact float64 value, on rows
    chosen to make the rounding worst (near-parallel rows and centroids, a common offset, norms
    over eight orders of magnitude)."""
    rng = np.random.default_rng(d)
    k = 64
    base = rng.standard_normal((1, d))
    c = base + 0.05 * rng.standard_normal((k, d))
    x = np.concatenate(
        [
            base + 0.05 * rng.standard_normal((300, d)),  # near-parallel to the centroids
            rng.standard_normal((300, d)) * np.exp(rng.uniform(-9, 9, (300, 1))),
            np.abs(rng.standard_normal((300, d))) + 5.0,
        ]
    ).astype(np.float32)
    c = c.astype(np.float32)
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    a = FusedAssigner(spherical, screen="bfloat16")
    a.set_centroids(torch.from_numpy(c))
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    xp = x - a._mu  # as the screen centres them, in float32
    for low in (True, False):
        if low:
            xb = torch.from_numpy(np.ascontiguousarray(xp)).to(torch.bfloat16)
            g = torch.mm(a._cs16, xb.T).float().numpy()
            cn, rn = a._cn16, np.linalg.norm(xp.astype(np.float64), axis=1)
        else:
            g = torch.mm(a._cs, torch.from_numpy(x).T).numpy()
            cn, rn = a._cn, np.linalg.norm(x64, axis=1)
        f = cn[:, None] + g  # K x B, as the kernel forms it (float32)
        if spherical:
            exact = -(c64 @ x64.T)
        else:
            sq = ((x64[None, :, :] - c64[:, None, :]) ** 2).sum(-1)
            exact = (
                sq - (xp.astype(np.float64) ** 2).sum(1)[None, :]
                if low
                else sq - (x64**2).sum(1)[None, :]
            )
        aa, bb, cc = a._bounds[low]
        margin = aa * rn + bb + cc * rn * rn
        err = np.abs(f.astype(np.float64) - exact)
        assert (err <= margin[None, :]).all(), (low, float((err / margin[None, :]).max()))


@needs_numba
def test_screen_falls_back_to_float32_on_near_ties_with_exact_labels():
    """Unstructured low-dimensional data leaves near-ties everywhere: after the first task the
    pass screens in float32, and the labels are still the exact nearest centroids."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4000, 4)).astype(np.float32)
    c = (rng.standard_normal((600, 4)) * 0.2).astype(np.float32)
    a = FusedAssigner(False, n_threads=1, task_rows=256, screen="bfloat16")
    a.set_centroids(torch.from_numpy(c))
    lab, _ = a.assign(torch.from_numpy(x))
    assert not a._screen_low
    np.testing.assert_array_equal(lab.numpy(), exact_argmin(x, c, False))
    counts = a.screen_counts
    assert counts["rows"] == len(x) and counts["float32_tasks"] == -(-len(x) // 256) - 1
    assert counts["distances"] >= len(x)
    a.set_centroids(torch.from_numpy(c))  # each new set of centroids tries bfloat16 again
    assert a._screen_low


@needs_numba
def test_bfloat16_screen_settles_clustered_rows_without_a_recheck():
    """Rows near one of well-separated centres are settled by the bfloat16 screen itself: one
    exact distance each, none sent through all the scores again, no float32 fallback."""
    x, _, centres = make_blobs(
        4000, 64, centers=50, cluster_std=1.0, center_box=(-20, 20), random_state=0,
        return_centers=True,
    )  # fmt: skip
    a = FusedAssigner(False, n_threads=2, screen="bfloat16")
    a.set_centroids(torch.from_numpy(centres.astype(np.float32)))
    lab, _ = a.assign(torch.from_numpy(x.astype(np.float32)))
    counts = a.screen_counts
    assert counts["rows_rechecked"] == 0 and counts["float32_tasks"] == 0
    assert counts["distances"] < 1.01 * len(x)
    ref = exact_argmin(x.astype(np.float32), centres.astype(np.float32), False)
    np.testing.assert_array_equal(lab.numpy(), ref)


def test_screen_values(monkeypatch):
    assert resolve_screen("float32", 4096, 4096) == "float32"
    assert resolve_screen("bfloat16", 2, 2) == "bfloat16"
    monkeypatch.setattr(screen_mod, "amx_available", lambda: True)
    assert resolve_screen("auto", 256, 256) == "bfloat16"
    assert resolve_screen("auto", 255, 4096) == resolve_screen("auto", 4096, 128) == "float32"
    monkeypatch.setattr(screen_mod, "amx_available", lambda: False)
    assert resolve_screen("auto", 4096, 4096) == "float32"
    a = FusedAssigner(False, screen="auto")
    a.set_centroids(torch.zeros((300, 300)))
    assert a.screen_used == "float32"
    with pytest.raises(ConfigError, match="screen"):
        resolve_screen("int8", 1, 1)
    with pytest.raises(ConfigError, match="screen"):
        FusedAssigner(False, screen="fp8")
    with pytest.raises(ConfigError, match="screen"):
        KMeans(3, screen="fp16").fit(np.zeros((10, 2), dtype=np.float32))
    assert screen_margins(256, False, True)[0] > screen_margins(256, False, False)[0] > 0


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("block_elems", [None, 1000, 4096])
def test_torch_blocked_assignment_equals_brute_force(spherical, block_elems):
    x, c = data(2049, 24, 300, spherical, seed=2)
    a = TorchAssigner(spherical, block_elems=block_elems)
    lab = check_against_brute_force(a, x, c, spherical)
    if block_elems is not None:  # several blocks, the last one short, one reused buffer
        assert a.block_rows(torch.device("cpu")) < len(x)
        assert a._buf is not None and a._buf.numel() <= max(block_elems, 300)
    # the generic accumulate (CPU bookkeeping) adds the same sums
    k = len(c)
    sums = torch.zeros((k, 24), dtype=torch.float64)
    stats = torch.zeros(k + 1, dtype=torch.float64)
    a.accumulate(torch.from_numpy(x), sums, stats)
    ref_sums, ref_counts = sums_by_label(x, lab, k)
    np.testing.assert_allclose(sums.numpy(), ref_sums, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(stats.numpy()[:k], ref_counts)


def test_fused_task_rows():
    assert fused_task_rows(1000) == 2048
    assert fused_task_rows(256) == 2048
    assert fused_task_rows(4096) == 512
    assert fused_task_rows(1) == 2048 and fused_task_rows(10**7) == 256
    # 8 MiB of centroids or more: at least 1024-row tasks amortise packing them ...
    assert fused_task_rows(4096, 2048) == 1024 and fused_task_rows(1000, 512) == 2048
    assert fused_task_rows(256, 8192) == 2048
    # ... unless that leaves fewer than 4 tasks per worker
    assert fused_task_rows(4096, 2048, n=10_000, threads=2) == 1024
    assert fused_task_rows(4096, 2048, n=5_000, threads=2) == 512
    assert fused_task_rows(256, 8, n=1000, threads=2) == 256
    assert fused_task_rows(1000, 128, n=100_000, threads=2) == 2048


@needs_numba
@pytest.mark.parametrize("spherical", [False, True])
def test_fused_fit_within_tolerance_of_sklearn_and_other_backends(spherical):
    X, _ = make_blobs(4000, n_features=20, centers=30, cluster_std=4.0, random_state=3)
    X = X.astype(np.float32)
    init = X[np.random.default_rng(0).choice(len(X), 30, replace=False)]
    kw = dict(n_iter=10, init=init, spherical=spherical, progress=False)
    fused = KMeans(30, backend="fused", **kw).fit(X)
    torch_ = KMeans(30, backend="torch", **kw).fit(X)
    assert fused.backend_ == "fused"
    assert fused.inertia_ == pytest.approx(torch_.inertia_, rel=1e-5)
    np.testing.assert_allclose(fused.cluster_centers_, torch_.cluster_centers_, atol=1e-4)
    if not spherical:
        ref = SkKMeans(30, init=init, n_init=1, max_iter=10, algorithm="lloyd", tol=0.0).fit(X)
        assert fused.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)


@needs_numba
def test_auto_backend_is_fused_on_cpu():
    X, _ = make_blobs(500, n_features=4, centers=3, random_state=0)
    assert KMeans(3, n_iter=2, progress=False).fit(X.astype(np.float32)).backend_ == "fused"


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_streamed_refinement_equals_in_memory(tmp_path, backend):
    if backend == "fused" and not numba_available():
        pytest.skip("numba missing")
    X, _ = make_blobs(6011, n_features=9, centers=12, cluster_std=3.0, random_state=5)
    X = X.astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, X)
    kw = dict(
        n_iter=4,
        subsample=0.3,
        refine_iter=3,
        backend=backend,
        seed=4,
        chunk_size=500,  # 13 chunks, the last one short: the reader thread and its ring
        progress=False,
    )
    mem = KMeans(12, **kw).fit(X)
    mm = np.load(path, mmap_mode="r")
    streamed = KMeans(12, **kw).fit(mm)
    by_path = KMeans(12, **kw).fit(str(path))
    for other in (streamed, by_path):
        np.testing.assert_array_equal(other.labels_, mem.labels_)
        np.testing.assert_allclose(other.cluster_centers_, mem.cluster_centers_, rtol=1e-6)
        assert other.inertia_ == pytest.approx(mem.inertia_, rel=1e-9)
        assert [h["phase"] for h in other.history_] == ["train"] * 4 + ["refine"] * 3


def test_prefetch_reader_is_bounded_stops_early_and_reports_errors(tmp_path, monkeypatch):
    X = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    path = tmp_path / "x.npy"
    np.save(path, X)
    rows = RawRows(np.load(path, mmap_mode="r"))
    src = RowSource.of_rows(rows, 0, rows.n, 7, torch.device("cpu"))
    assert src.prefetch
    got = [(a, x.numpy().copy()) for a, x in src.raw_chunks()]
    assert [a for a, _ in got] == list(range(0, 50, 7))
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]), X)
    # stopping early ends the reader thread
    it = src.raw_chunks()
    next(it)
    it.close()
    # an error while reading reaches the consumer
    calls = {"n": 0}
    original = rows.read

    def failing(start, stop, buf=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk gone")
        return original(start, stop, buf)

    monkeypatch.setattr(rows, "read", failing)
    with pytest.raises(OSError, match="disk gone"):
        list(src.raw_chunks())
    assert rows_mod.PREFETCH_CHUNKS >= 1


def test_kmeans_is_a_sklearn_estimator():
    init = np.zeros((3, 4), dtype=np.float32)
    km = KMeans(3, n_iter=7, spherical=True, init=init, backend="torch", progress=False)
    params = km.get_params()
    assert params["n_clusters"] == 3 and params["n_iter"] == 7 and params["init"] is init
    twin = clone(km)
    assert twin is not km and twin.get_params()["n_iter"] == 7
    km.set_params(n_iter=2)
    assert km.n_iter == 2
    X, _ = make_blobs(300, n_features=4, centers=3, random_state=1)
    fitted = clone(KMeans(3, n_iter=3, backend="torch", progress=False)).fit(X)
    assert not hasattr(clone(fitted), "labels_")
    assert fitted.fit_predict(X).shape == (300,)


def test_per_label_and_prototype_estimators():
    X, y = make_blobs(600, n_features=5, centers=4, cluster_std=0.5, random_state=2)
    X = X.astype(np.float32)
    y = y.copy()
    y[:20] = -1
    proto = PrototypeClustering().fit(X, y)
    a, c = prototype_clusters(X, y)
    np.testing.assert_array_equal(proto.labels_, a)
    np.testing.assert_array_equal(proto.cluster_centers_, c)
    np.testing.assert_array_equal(proto.predict(X), a)
    np.testing.assert_array_equal(proto.classes_, [0, 1, 2, 3])
    assert clone(proto).get_params() == {"spherical": False, "chunk_size": 16384}
    per = PerLabelKMeans(8, n_iter=5, backend="torch", progress=False).fit(X, y)
    assert per.cluster_centers_.shape == (8, 5) and sum(per.info_["k"]) == 8
    np.testing.assert_array_equal(per.predict(X[20:]), per.labels_[20:])
    assert clone(per).get_params()["n_clusters"] == 8
    np.testing.assert_array_equal(nearest_centroid(X, per.cluster_centers_), per.predict(X))


@pytest.mark.parametrize("spherical", [False, True])
def test_blockwise_update_equals_the_float64_means(spherical):
    from clusterfit.cluster.lloyd import update_centroids

    rng = np.random.default_rng(9)
    sums = rng.normal(size=(600, 7)) * 100.0
    counts = rng.integers(1, 50, 600).astype(np.float64)
    prev = rng.normal(size=(600, 7)).astype(np.float32)
    cent, n_split = update_centroids(sums, counts, prev, rng, spherical, 1 / 1024)
    ref = sums / counts[:, None]
    if spherical:
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert n_split == 0 and cent.dtype == np.float32
    np.testing.assert_array_equal(cent, ref.astype(np.float32))


def test_float32_npy_is_read_in_place_and_falls_back_to_pread(tmp_path, monkeypatch):
    """A float32 .npy memmap's chunks are views of a private mapping of the file (no copy out
    of the page cache), with each chunk's pages dropped once the next is asked for; where the
    kernel refuses to populate a range the same chunks come from pread."""
    import sys

    X = np.random.default_rng(4).normal(size=(3000, 24)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, X)
    for refuse in (False, True):
        if refuse:  # an advice the kernel does not know: EINVAL, as on kernels before 5.14
            monkeypatch.setattr(rows_mod, "_POPULATE_READ", 9999)
        rows = RawRows(np.load(path, mmap_mode="r"))
        linux = sys.platform.startswith("linux")
        assert (rows._mapped is not None) == linux
        lo = rows._mapped.ctypes.data if linux else 0
        hi = lo + (rows._mapped.nbytes if linux else 0)
        src = RowSource.of_rows(rows, 100, 2800, 512, torch.device("cpu"))
        got = []
        for a, x in src.raw_chunks():
            in_the_map = lo <= x.data_ptr() < hi
            assert in_the_map == (linux and not refuse)
            got.append((a, x.numpy().copy()))
        assert [a for a, _ in got] == list(range(0, 2800, 512))
        np.testing.assert_array_equal(np.concatenate([x for _, x in got]), X[100:2900])
        assert (rows._mapped is None) == (refuse or not linux)
