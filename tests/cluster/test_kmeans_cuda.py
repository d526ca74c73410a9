"""The torch backend on a CUDA device equals the torch backend on CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from clusterfit.cluster import KMeans

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def data(n=4000, d=16, k=9, seed=0):
    X, _ = make_blobs(n, n_features=d, centers=k, cluster_std=1.5, random_state=seed)
    return X.astype(np.float32)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_iter=6),
        dict(n_iter=6, spherical=True, init="k-means++"),
        dict(n_iter=4, pca_dim=8, whiten=True, subsample=0.5, refine_iter=2, chunk_size=700),
    ],
)
def test_cuda_equals_cpu(kwargs):
    X = data()
    cpu = KMeans(9, backend="torch", device="cpu", progress=False, **kwargs).fit(X)
    gpu = KMeans(9, backend="torch", device="cuda", progress=False, **kwargs).fit(X)
    assert gpu.device_.type == "cuda" and gpu.backend_ == "torch"
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_allclose(gpu.cluster_centers_, cpu.cluster_centers_, atol=1e-4)
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-5)
    np.testing.assert_array_equal(gpu.predict(X), gpu.labels_)


def test_cuda_tensor_and_memmap_inputs(tmp_path):
    X = data(seed=1)
    path = tmp_path / "x.npy"
    np.save(path, X)
    kw = dict(n_iter=5, subsample=1000, refine_iter=2, chunk_size=512, progress=False)
    a = KMeans(9, **kw).fit(torch.from_numpy(X).cuda())  # "auto" -> torch on the tensor's device
    b = KMeans(9, device="cuda", **kw).fit(np.load(path, mmap_mode="r"))
    assert a.backend_ == "torch" and a.device_.type == "cuda"
    np.testing.assert_array_equal(a.labels_, b.labels_)
    empty = np.concatenate([np.full((1, 16), 1e4, np.float32), X[:8]])  # cluster 0 starts empty
    c = KMeans(9, n_iter=3, init=empty, device="cuda", progress=False).fit(X)
    assert c.n_reseeded_ >= 1 and np.bincount(c.labels_, minlength=9).min() > 0
