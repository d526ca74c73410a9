"""Stage 3: cluster N_pre's features into K groups (paper §3.1; App. A and §5.2 alternatives).

``cluster.method``: ``kmeans`` (the paper's), ``per_label`` (k-means within each label, k_l ∝ √n_l,
§5.2) or ``prototype`` (per-label means as centres, one assignment step, App. A). Writes
``clusters/assignments.npy`` (N int64), ``centroids.npy`` (K x D), ``stats.json`` (objective per
iteration, cluster sizes, empty clusters, NMI/ARI/purity against true labels when known, the
k-means backend and screen used). ``cluster.backend`` (auto | fused | faiss | torch) and
``cluster.screen`` (auto | bfloat16 | float32: the fused backend's GEMM) go to both k-means
methods.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from clusterfit.artifacts import Stage, save_npy, write_json
from clusterfit.cluster import KMeans, cluster_stats, per_label_kmeans, prototype_clusters
from clusterfit.errors import ClusterFitError
from clusterfit.stages import extract, graph
from clusterfit.stages.context import Context, each_task, finish, start, up_to_date

NAME = "clusters"


def folder(ctx: Context, task: int = 0) -> str:
    """``clusters`` (``clusters-<n>`` for the n-th N_pre), suffixed by the K of a sweep."""
    return graph.folder("cluster", task=task, variant=ctx.variant)


@graph.memo("cluster")
def stage(ctx: Context, task: int = 0) -> Stage:
    """The clustering of the ``task``-th N_pre's features: its config, the seed, the features."""
    config = {"cluster": asdict(ctx.cfg.cluster), "seed": ctx.cfg.seed}
    inputs = {"features": extract.stage(ctx, task).fingerprint}
    return Stage(ctx.run_dir, folder(ctx, task), config, inputs)


def run(ctx: Context) -> dict[str, Any]:
    """Cluster the features of every N_pre; returns the (first) clustering's meta."""
    return each_task(ctx, run_task)


def run_task(ctx: Context, task: int = 0) -> dict[str, Any]:
    """Cluster the ``task``-th N_pre's features (or skip: done already)."""
    cfg, st = ctx.cfg, stage(ctx, task)
    if (meta := up_to_date(ctx, st)) is not None:
        return meta
    feats = extract.stage(ctx, task)
    feats.require("extract")
    X = extract.open_features(feats, cfg.extract.layer)  # a memmap, or sharded over files
    c = cfg.cluster
    labels = ctx.data().labels
    n = X.shape[0]
    if c.k > n:
        raise ClusterFitError(f"cluster.k={c.k} is larger than the {n} items to cluster: lower it")
    if c.method in ("per_label", "prototype") and not (labels >= 0).all():
        raise ClusterFitError(
            f"cluster.method={c.method} needs a label for every item; {ctx.data().source} "
            "has items without one: use cluster.method=kmeans"
        )
    start(st)
    ctx.say(f"{st.name}: {c.method} of {n} x {X.shape[1]} features into K={c.k}")
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    reseeded = 0
    backend = screen = None  # the k-means backend (and fused screen) used (method=kmeans)
    if c.method == "kmeans":
        km = KMeans(
            c.k,
            n_iter=c.n_iter,
            spherical=c.spherical,
            seed=cfg.seed,
            init=c.init,
            backend=c.backend,
            screen=c.screen,
            device=str(ctx.device),
            subsample=c.subsample,
            refine_iter=c.refine_iter,
            pca_dim=c.pca_dim,
            whiten=c.whiten,
            progress=ctx.progress,
        ).fit(X)
        assignments, centroids = km.labels_, km.cluster_centers_
        history, reseeded = km.history_, km.n_reseeded_
        backend = km.backend_
        screen = km.screen_
    elif c.method == "per_label":
        assignments, centroids, _ = per_label_kmeans(
            X,
            labels,
            c.k,
            seed=cfg.seed,
            n_iter=c.n_iter,
            spherical=c.spherical,
            backend=c.backend,
            screen=c.screen,
            device=str(ctx.device),
            progress=ctx.progress,
        )
    else:
        assignments, centroids = prototype_clusters(X, labels, spherical=c.spherical)
    seconds = time.perf_counter() - t0
    k = int(centroids.shape[0])
    stats = cluster_stats(
        assignments,
        k,
        labels=labels if (labels >= 0).any() else None,
        history=history,
        n_reseeded=reseeded,
    )
    stats["seconds"] = round(seconds, 3)
    if backend is not None:
        stats["backend"] = backend
    if screen is not None:
        stats["screen"] = screen
    save_npy(st.dir / "assignments.npy", np.asarray(assignments, dtype=np.int64))
    save_npy(st.dir / "centroids.npy", np.asarray(centroids, dtype=np.float32))
    write_json(st.dir / "stats.json", stats)
    summary = {"k": k, "seconds": round(seconds, 3)}
    for key in ("nmi", "ari", "purity", "n_empty", "imbalance"):
        if key in stats:
            summary[key] = stats[key]
    return finish(st, summary)
