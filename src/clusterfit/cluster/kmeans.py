"""k-means as an estimator: ClusterFit's clustering step (Yan et al., CVPR 2020, §3).

ClusterFit clusters the (L2-normalised) features of N_pre with k-means and uses the cluster ids as
pseudo-labels for N_cf. The paper runs k-means on a 200M-item subsample for 30 iterations and then
5 more iterations over all points (§3); :class:`KMeans` does the same with ``subsample=`` and
``refine_iter=``, streaming the full data in chunks from a ``.npy`` memmap so that peak memory does
not grow with N.

The pieces, one concern per module, all public:

* :mod:`clusterfit.cluster.rows`: reading the rows (:class:`RawRows`, :class:`RowSource`, with a
  reader thread for memmaps), validating them, gathering chosen rows on every rank;
* :mod:`clusterfit.cluster.pca`: the optional PCA / whitening (:class:`PCA`, :func:`fit_pca`);
* :mod:`clusterfit.cluster.assign`: nearest-centroid assignment: the fused cache-blocked CPU
  kernel (default on CPU), the torch backend (GPU, torch.distributed) and faiss;
* :mod:`clusterfit.cluster.lloyd`: k-means++ seeding, the Lloyd pass, the centroid update with
  re-seeding of empty clusters, and ``faiss.Kmeans`` itself for reference;
* this module: the :class:`KMeans` estimator that ties them together.

Under torch.distributed every rank passes the same full X and works on its shard of the rows
(:func:`clusterfit.distributed.shard`); centroid sums, counts and the objective are all-reduced,
so every rank ends with the centroids of a single-process run on the same data and seed.
Centroid sums are accumulated in float64 across chunks and ranks. ``benchmarks/kmeans.py`` times
the backends against ``faiss.Kmeans`` and scikit-learn as shares of the machine's GEMM peak.

Objective (``inertia_`` and ``history_[i]["objective"]``): the sum over points of the squared
Euclidean distance to the assigned centroid for plain k-means, and the sum of ``1 - cos(x, c)``
for spherical k-means, measured in the clustering space (after optional PCA / whitening and, for
spherical k-means, L2-normalisation of the rows).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from tqdm.auto import tqdm

from clusterfit import distributed as cfdist
from clusterfit.cluster.assign import (
    Assigner,
    FaissAssigner,
    FusedAssigner,
    TorchAssigner,
    chunk_sums,
    faiss_available,
    faiss_has_gpu,
    import_faiss,
    numba_available,
)
from clusterfit.cluster.lloyd import (
    SPLIT_EPS,
    faiss_kmeans,
    kmeans_plus_plus,
    lloyd_pass,
    update_centroids,
)
from clusterfit.cluster.pca import PCA, fit_pca
from clusterfit.cluster.rows import (
    RawRows,
    RowSource,
    bad_rows,
    gather_rows,
    normalise_rows,
    validate_rows,
)
from clusterfit.cluster.screen import SCREENS
from clusterfit.errors import ConfigError, DataError

__all__ = ["PCA", "SPLIT_EPS", "KMeans", "faiss_available", "faiss_kmeans"]

_INITS = ("random", "k-means++")
_BACKENDS = ("auto", "fused", "faiss", "torch")
_CHUNK_BYTES = 32 << 20  # default chunk: rows of this many bytes (float32)

# The names these pieces had when they lived in this module (kept importable).
_import_faiss = import_faiss
_faiss_has_gpu = faiss_has_gpu
_RawRows = RawRows
_Source = RowSource
_fit_pca = fit_pca
_TorchAssigner = TorchAssigner
_FaissAssigner = FaissAssigner
_normalise_rows = normalise_rows
_validate = validate_rows
_bad_rows = bad_rows
_gather_global = gather_rows
_kmeans_plus_plus = kmeans_plus_plus
_lloyd_pass = lloyd_pass
_chunk_sums = chunk_sums
_update = update_centroids


class KMeans(ClusterMixin, BaseEstimator):
    """k-means (Lloyd) clustering, plain or spherical, fused CPU / torch / faiss (ClusterFit §3).

    A scikit-learn estimator: ``get_params`` / ``set_params`` / ``sklearn.base.clone`` work.

    Parameters
    ----------
    n_clusters: K.
    n_iter: Lloyd iterations on the training rows (all rows, or the subsample).
    spherical: L2-normalise the rows, assign by inner product (cosine), keep unit-norm centroids.
    seed: seeds the subsample, the initial centroids and the re-seeding of empty clusters.
    init: ``"random"`` (K distinct training rows), ``"k-means++"`` (D²-sampling over the training
        rows; K sequential passes over them), or a K x D' array of initial centroids given in the
        clustering space (D' = ``pca_dim`` or D; normalised when spherical).
    backend: ``"auto"`` (torch when ``device`` is CUDA; on CPU fused when numba is importable,
        else faiss when importable, else torch), ``"fused"`` (cache-blocked CPU assignment fused
        with the centroid sums, :class:`~clusterfit.cluster.assign.FusedAssigner`), ``"faiss"``
        or ``"torch"`` (the GPU path). Under torch.distributed every backend works on its shard
        and all-reduces (faiss and fused need a CPU / gloo group).
    screen: the fused backend's GEMM: ``"bfloat16"`` (AMX tiles, 5-8x the float32 rate; every
        near-tie it cannot settle is re-checked in float64, so each label is the exact nearest
        centroid), ``"float32"`` (the plain float32 GEMM, labels exact to its rounding) or
        ``"auto"`` (bfloat16 where the CPU has AMX and K, D >= 256, where it measured faster on
        real features). See
        :class:`~clusterfit.cluster.assign.FusedAssigner`.
    device: torch device for the torch backend (default: X's device if X is a tensor, else CPU).
        With the faiss backend and a CUDA device, faiss-gpu searches on GPU 0. The fused backend
        runs on CPU with ``torch.get_num_threads()`` threads.
    subsample: train on a random subset of rows, held in memory: an int count or a float fraction
        in (0, 1]. ``None``: all rows.
    refine_iter: further Lloyd iterations over *all* rows after training, streamed in chunks
        (from a memmap, the next chunk is read by a background thread while one is assigned).
    chunk_size: rows read (from a memmap) and assigned at a time; default: about 32 MB of float32
        rows (``2**23 // D``, at least 1024).
    pca_dim: reduce to this many principal components first (fitted on the training rows);
        ``cluster_centers_`` then live in the PCA space and ``pca_`` holds the projection.
    whiten: scale the principal components to unit variance (needs ``pca_dim``).
    progress: show a tqdm bar over iterations (rank 0 only).

    X (for ``fit`` / ``predict``) is an N x D float array: numpy, torch tensor, ``np.memmap``
    (``np.load(path, mmap_mode="r")``, read in chunks and never loaded whole unless subsampled),
    or a path to a ``.npy`` file. Under torch.distributed every rank passes the same full X and
    works on its shard of the rows; ``labels_`` is gathered on every rank.

    Fitted attributes
    -----------------
    cluster_centers_: K x D' float32 numpy (in the clustering space: after PCA / whitening).
    labels_: N int64, the final assignment of every row to ``cluster_centers_``.
    inertia_: objective of that assignment: sum of squared distances (plain) or sum of
        ``1 - cos`` (spherical), in the clustering space.
    n_iter_: Lloyd iterations run (``n_iter + refine_iter``).
    history_: one dict per iteration: ``iteration``, ``phase`` ("train" | "refine"),
        ``objective`` (of that iteration's assignment, before its centroid update), ``n_points``,
        ``n_empty_reseeded``, ``seconds``.
    n_reseeded_: empty clusters re-seeded, over all iterations.
    pca_: :class:`PCA` or None. backend_, device_, screen_ (the fused backend's, else None):
    what was used. n_features_in_: D.
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_iter: int = 20,
        spherical: bool = False,
        seed: int = 0,
        init: str | np.ndarray | torch.Tensor = "random",
        backend: str = "auto",
        screen: str = "auto",
        device: str | torch.device | None = None,
        subsample: int | float | None = None,
        refine_iter: int = 0,
        chunk_size: int | None = None,
        pca_dim: int | None = None,
        whiten: bool = False,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.spherical = spherical
        self.seed = seed
        self.init = init
        self.backend = backend
        self.screen = screen
        self.device = device
        self.subsample = subsample
        self.refine_iter = refine_iter
        self.chunk_size = chunk_size
        self.pca_dim = pca_dim
        self.whiten = whiten
        self.progress = progress

    # ---------------------------------------------------------------- parameters and setup

    def _check_params(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.n_clusters) or self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be a positive int, got {self.n_clusters!r}")
        for name in ("n_iter", "refine_iter"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {v!r}")
        if self.chunk_size is not None and (not is_int(self.chunk_size) or self.chunk_size < 1):
            raise ConfigError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if isinstance(self.init, str) and self.init not in _INITS:
            raise ConfigError(f"init must be one of {_INITS} or a K x D array, got {self.init!r}")
        if self.backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.screen not in SCREENS:
            raise ConfigError(f"screen must be one of {SCREENS}, got {self.screen!r}")
        s = self.subsample
        if s is not None and not (
            (is_int(s) and s >= 1) or (isinstance(s, float) and 0.0 < s <= 1.0)
        ):
            raise ConfigError(
                f"subsample must be None, an int >= 1 (rows) or a float in (0, 1] (fraction), "
                f"got {s!r}"
            )
        if self.pca_dim is not None and (not is_int(self.pca_dim) or self.pca_dim < 1):
            raise ConfigError(f"pca_dim must be None or a positive int, got {self.pca_dim!r}")
        if self.whiten and self.pca_dim is None:
            raise ConfigError("whiten=True needs pca_dim (whitening is applied after PCA)")

    def _resolve_backend(self, rows: RawRows) -> tuple[str, torch.device, bool]:
        """-> (backend, device for our tensors, whether faiss searches on GPU)."""
        device = torch.device(self.device) if self.device is not None else rows.device
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device} requested but CUDA is not available")
        faiss = import_faiss()
        backend = self.backend
        if backend == "auto":
            if device.type != "cpu":
                backend = "torch"
            elif numba_available():
                backend = "fused"
            else:
                backend = "faiss" if faiss is not None else "torch"
        if backend == "torch":
            return "torch", device, False
        if backend == "fused":
            if not numba_available():
                raise ConfigError("backend='fused' needs numba: pip install numba")
            if device.type != "cpu":
                raise ConfigError(
                    f"backend='fused' runs on CPU; use backend='torch' for device={device}"
                )
            return "fused", device, False
        if faiss is None:
            raise ConfigError("backend='faiss' but faiss is not installed: pip install faiss-cpu")
        gpu = device.type == "cuda"
        if gpu and not faiss_has_gpu(faiss):
            raise ConfigError(
                f"backend='faiss' with device={device} needs faiss-gpu; "
                "use backend='torch' for GPU k-means"
            )
        return "faiss", torch.device("cpu"), gpu

    def _n_train(self, n: int) -> int:
        s = self.subsample
        if s is None:
            return n
        m = math.ceil(s * n) if isinstance(s, float) else int(s)
        if m > n:
            warnings.warn(f"subsample={s} exceeds the {n} rows; training on all rows", stacklevel=3)
        return min(m, n)

    def _chunk_rows(self, d: int) -> int:
        if self.chunk_size is not None:
            return int(self.chunk_size)
        return max(1024, _CHUNK_BYTES // (4 * d))

    def _make_assigner(self) -> Assigner:
        if self.backend_ == "faiss":
            return FaissAssigner(self.spherical, self._faiss_gpu)
        if self.backend_ == "fused":
            return FusedAssigner(self.spherical, screen=self.screen)
        return TorchAssigner(self.spherical)

    def _to_space(self, x: torch.Tensor) -> torch.Tensor:
        if self.pca_ is not None:
            x = self.pca_.apply(x)
        if self.spherical:
            x = normalise_rows(x)
        return x

    # ---------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any = None) -> KMeans:
        """Cluster the N x D rows of X; returns self (see the class docstring)."""
        del y
        self._check_params()
        rows = RawRows(X)
        n, d, k = rows.n, rows.d, int(self.n_clusters)
        if k > n:
            raise DataError(
                f"n_clusters={k} is larger than the number of rows N={n}: lower n_clusters"
            )
        if self.pca_dim is not None and self.pca_dim > d:
            raise ConfigError(f"pca_dim={self.pca_dim} exceeds the {d} features of X")
        self.backend_, self.device_, self._faiss_gpu = self._resolve_backend(rows)
        device = self.device_
        rank = cfdist.get_rank()
        chunk = self._chunk_rows(d)
        self.n_features_in_ = d
        self.pca_: PCA | None = None

        full_part = cfdist.shard(n)
        full = RowSource.of_rows(rows, full_part.start, len(full_part), chunk, device)
        validate_rows(full, full_part.start, self.spherical, device)

        # The training rows: a seeded subsample (in memory, each rank its shard) or all rows.
        n_train = self._n_train(n)
        if n_train < k:
            raise DataError(
                f"subsample={self.subsample} keeps {n_train} rows, fewer than "
                f"n_clusters={k}: raise subsample"
            )
        if n_train < n:
            picked = np.sort(np.random.default_rng([self.seed, 1]).choice(n, n_train, False))
            part = cfdist.shard(n_train)
            mine = picked[part.start : part.stop]
            sample = torch.empty((len(mine), d), dtype=torch.float32, device=device)
            for a in range(0, len(mine), chunk):
                sample[a : a + chunk] = rows.take(mine[a : a + chunk]).to(device)
            train = RowSource.of_tensor(sample, chunk)
            train_start = part.start
        else:
            train, train_start = full, full_part.start
        self.n_train_ = n_train

        if self.pca_dim is not None:
            self.pca_ = fit_pca(train, n_train, int(self.pca_dim), self.whiten, device)
        dim = int(self.pca_dim) if self.pca_dim is not None else d
        if self.pca_ is not None or self.spherical:
            train.transform = self._to_space
            full.transform = self._to_space
        if train.in_memory:
            train.materialise(dim)

        centroids = self._initial_centroids(train, train_start, n_train, dim, device)
        centroids = centroids.cpu().numpy().astype(np.float32)
        assigner = self._make_assigner()
        split_rng = np.random.default_rng([self.seed, 2])
        sums_buffer = torch.empty((k, dim), dtype=torch.float64, device=device)
        self.history_: list[dict[str, Any]] = []
        self.n_reseeded_ = 0
        total_iter = int(self.n_iter) + int(self.refine_iter)
        bar = tqdm(
            total=total_iter, desc="k-means", disable=not self.progress or rank != 0, leave=False
        )
        phases = [
            ("train", train, int(self.n_iter), n_train),
            ("refine", full, int(self.refine_iter), n),
        ]
        it = 0
        for phase, src, count, n_points in phases:
            for _ in range(count):
                t0 = time.perf_counter()
                assigner.set_centroids(torch.from_numpy(centroids).to(device))
                sums, counts, obj, _ = lloyd_pass(
                    src, assigner, k, dim, device, True, False, sums_buffer
                )
                centroids, n_split = update_centroids(
                    sums, counts, centroids, split_rng, self.spherical, SPLIT_EPS
                )
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                it += 1
                self.n_reseeded_ += n_split
                self.history_.append(
                    {
                        "iteration": it,
                        "phase": phase,
                        "objective": obj,
                        "n_points": n_points,
                        "n_empty_reseeded": n_split,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                bar.set_postfix(objective=f"{obj:.5g}", reseeded=self.n_reseeded_)
                bar.update(1)
        bar.close()
        self.n_iter_ = it

        assigner.set_centroids(torch.from_numpy(centroids).to(device))
        _, _, inertia, local_labels = lloyd_pass(full, assigner, k, dim, device, False, True)
        self.screen_ = getattr(assigner, "screen_used", None)
        assert local_labels is not None
        labels = cfdist.all_gather_cat(torch.from_numpy(local_labels).to(device))
        self.labels_ = labels.cpu().numpy().astype(np.int64, copy=False)
        self.inertia_ = inertia
        self.cluster_centers_ = centroids
        return self

    def _initial_centroids(
        self, src: RowSource, start: int, n_train: int, dim: int, device: torch.device
    ) -> torch.Tensor:
        """K x dim float32 on ``device``, identical on every rank."""
        k = int(self.n_clusters)
        rng = np.random.default_rng([self.seed, 3])
        if not isinstance(self.init, str):
            init_np = np.array(
                self.init.detach().cpu() if isinstance(self.init, torch.Tensor) else self.init,
                dtype=np.float32,
            )
            if init_np.shape != (k, dim):
                raise DataError(
                    f"init array has shape {init_np.shape}; expected (n_clusters, D) = "
                    f"({k}, {dim}) in the clustering space"
                )
            if not np.isfinite(init_np).all():
                raise DataError("init array contains NaN or inf")
            init = torch.from_numpy(init_np).to(device)
            return normalise_rows(init) if self.spherical else init
        if self.init == "random":
            chosen = rng.choice(n_train, k, replace=False)
            return gather_rows(src, start, chosen, dim, device)
        return kmeans_plus_plus(src, start, n_train, k, dim, rng, self.spherical, device)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return ``labels_`` (N int64)."""
        return self.fit(X, y).labels_

    # ---------------------------------------------------------------- predict

    def predict(self, X: Any) -> np.ndarray:
        """Nearest centroid of each row of raw X (N x D; PCA applied): N int64 numpy.

        Local to this process (no collectives); X is read ``chunk_size`` rows at a time.
        """
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this KMeans is not fitted yet: call fit(X) first")
        rows = RawRows(X)
        if rows.d != self.n_features_in_:
            raise DataError(
                f"X has {rows.d} features but the model was fitted on {self.n_features_in_}"
            )
        src = RowSource.of_rows(rows, 0, rows.n, self._chunk_rows(rows.d), self.device_)
        assigner = self._make_assigner()
        assigner.set_centroids(torch.from_numpy(self.cluster_centers_).to(self.device_))
        out = np.empty(rows.n, dtype=np.int64)
        for a, x in src.raw_chunks():
            bad = ~torch.isfinite(x).all(1) if x.device.type != "cpu" else None
            if x.device.type == "cpu":
                bad = torch.from_numpy(~np.isfinite(x.numpy()).all(1))
            assert bad is not None
            if bool(bad.any()):
                first = (torch.nonzero(bad).flatten()[:5] + a).tolist()
                raise DataError(f"X has NaN or inf values in rows {first} (first few)")
            lab, _ = assigner.assign(self._to_space(x))
            out[a : a + x.shape[0]] = lab.cpu().numpy()
        return out
