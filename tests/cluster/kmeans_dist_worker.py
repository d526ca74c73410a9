"""One rank of the 2-process k-means test: ``python kmeans_dist_worker.py DATA.npy OUT.npz``.

Launched with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set; joins a gloo group through
clusterfit.distributed and fits the configurations of ``CONFIGS`` on the memmapped data.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from clusterfit import distributed
from clusterfit.cluster import KMeans

CONFIGS = {
    "plain": dict(n_iter=6, init="random", seed=1),
    "spherical_pp_sub_pca": dict(
        n_iter=5,
        spherical=True,
        init="k-means++",
        subsample=0.6,
        refine_iter=2,
        pca_dim=6,
        whiten=True,
        seed=2,
        chunk_size=300,
    ),
    "reseed": dict(n_iter=4, init="far", seed=3),
    # the default CPU backend under gloo: sums from several reader-thread chunks per rank
    "fused_sub_refine": dict(
        n_iter=4, init="k-means++", subsample=0.7, refine_iter=2, seed=4, chunk_size=256
    ),
}
BACKEND = {"fused_sub_refine": "fused"}


def far_init(X: np.ndarray, k: int) -> np.ndarray:
    """k initial centroids, the first far from every row: its cluster is empty (a re-seed)."""
    rows = X[np.random.default_rng(0).choice(len(X), k - 1, replace=False)]
    far = np.full((1, X.shape[1]), 1e3 * np.abs(X).max())
    return np.concatenate([far, rows]).astype(np.float32)


def fit_all(X: np.ndarray, k: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, cfg in CONFIGS.items():
        cfg = dict(cfg)
        if cfg["init"] == "far":
            cfg["init"] = far_init(np.asarray(X), k)
        km = KMeans(k, backend=BACKEND.get(name, "torch"), progress=False, **cfg).fit(X)
        out[f"{name}_centers"] = km.cluster_centers_
        out[f"{name}_labels"] = km.labels_
        out[f"{name}_inertia"] = np.array(km.inertia_)
        out[f"{name}_reseeded"] = np.array(km.n_reseeded_)
        out[f"{name}_objectives"] = np.array([h["objective"] for h in km.history_])
    return out


def main() -> None:
    torch.set_num_threads(1)
    assert distributed.init_from_env("gloo")
    X = np.load(sys.argv[1], mmap_mode="r")
    out = fit_all(X, int(sys.argv[3]))
    out["world_size"] = np.array(distributed.get_world_size())
    np.savez(sys.argv[2], **out)
    distributed.barrier()


if __name__ == "__main__":
    main()
