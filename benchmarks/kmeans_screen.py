"""The fused k-means' bfloat16 screen against its float32 GEMM, on a trained network's features.

``FusedAssigner(screen="bfloat16")`` (:mod:`clusterfit.cluster.assign`) multiplies bfloat16
copies of the rows and centroids and re-checks in float64 every row whose nearest centroid its
rounding bound cannot settle. How often that happens, and so whether the screen pays, depends
on the data: synthetic mixtures (``benchmarks/kmeans.py``) are kinder than real features. This
takes the features of N_pre of a finished run (the demo's by default: a small ResNet trained on
noisy Fashion-MNIST labels) at several layers and sizes (each layer average-pooled to at most
``max_dims``), tiles them ``--tile`` times with 5 % Gaussian noise, and fits
``clusterfit.cluster.KMeans`` with ``screen="float32"`` and ``screen="bfloat16"`` from the same
initial centroids, interleaved, ``--repeats`` times. Reported per case: the time of the
bfloat16 screen against the float32 GEMM (medians), the share of equal labels, the objectives'
relative difference, and the screen's counts (rows re-checked, exact distances per row, tasks
that fell back to the float32 screen). ``SCREEN_MIN_K`` / ``SCREEN_MIN_D`` (where
``screen="auto"`` takes the bfloat16 screen) follow these figures.

    python benchmarks/recipes.py demo          # once: the finished demo run
    python benchmarks/kmeans_screen.py         # about 4 minutes on 2 cores

Writes benchmarks/results/kmeans_screen.json (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = Path("/tmp/clusterfit-recipes/demo/demo")
# (layer, max_dims, Ks)
CASES = [
    ("res4", 4096, (50, 256, 1000)),
    ("res5", 512, (128, 256, 1000)),
    ("res3", 300, (128, 256, 1000)),
    ("res4", 256, (128, 256, 1000)),
    ("pool", 4096, (50, 256, 1000)),
]


def features(run: Path) -> dict[str, np.ndarray]:
    """N_pre's features of the run's bundled train images, one array per (layer, max_dims)."""
    from clusterfit.data import load_images
    from clusterfit.evaluate.features import pool_to_dims
    from clusterfit.features import compute_features
    from clusterfit.models.checkpoint import load_model

    net = load_model(run / "pretrain" / "checkpoint.pt")
    images = load_images("bundled", "train", progress=False)
    out = {}
    for layer, max_dims, _ in CASES:
        pool = functools.partial(pool_to_dims, max_dims=max_dims)
        got = compute_features(net, images, [layer], pool=pool, progress=False)
        assert got is not None
        out[f"{layer}@{max_dims}"] = got[layer]
    return out


def fit(x: np.ndarray, init: np.ndarray, screen: str) -> tuple[float, Any, dict[str, int]]:
    """One fit; returns (seconds, the estimator, the screen's counts of its last assigner)."""
    from clusterfit.cluster import KMeans, assign

    made: list[Any] = []
    original = assign.FusedAssigner.set_centroids

    def spy(self: Any, c: Any) -> None:
        if not made or made[-1] is not self:
            made.append(self)
        original(self, c)

    assign.FusedAssigner.set_centroids = spy  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        km = KMeans(init.shape[0], n_iter=5, init=init, screen=screen, progress=False).fit(x)
        seconds = time.perf_counter() - t0
    finally:
        assign.FusedAssigner.set_centroids = original  # type: ignore[method-assign]
    return seconds, km, dict(made[-1].screen_counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a finished run's folder")
    ap.add_argument("--tile", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kmeans_screen.json"))
    args = ap.parse_args()
    if not (args.run / "pretrain" / "checkpoint.pt").is_file():
        sys.exit(f"no finished run at {args.run}: run `python benchmarks/recipes.py demo` first")
    import torch

    feats = features(args.run)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/kmeans_screen.py", *sys.argv[1:]]),
        "run": str(args.run),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "cases": [],
    }
    for layer, max_dims, ks in CASES:
        x0 = feats[f"{layer}@{max_dims}"]
        noise = 0.05 * float(x0.std())
        tiles = [x0] + [
            x0 + noise * rng.standard_normal(x0.shape, dtype=np.float32)
            for _ in range(args.tile - 1)
        ]
        x = np.ascontiguousarray(np.concatenate(tiles))
        for k in ks:
            init = x[np.random.default_rng(0).choice(len(x), k, replace=False)].copy()
            times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
            fits: dict[str, Any] = {}
            counts: dict[str, int] = {}
            for _ in range(args.repeats):
                for screen in times:
                    seconds, km, c = fit(x, init, screen)
                    times[screen].append(seconds)
                    fits[screen] = km
                    if screen == "bfloat16":
                        counts = c
            a, b = fits["float32"], fits["bfloat16"]
            rows = max(counts["rows"], 1)
            case = {
                "layer": layer,
                "n": int(x.shape[0]),
                "d": int(x.shape[1]),
                "k": k,
                "float32_seconds": statistics.median(times["float32"]),
                "bfloat16_seconds": statistics.median(times["bfloat16"]),
                "bfloat16_over_float32": statistics.median(times["bfloat16"])
                / statistics.median(times["float32"]),
                "equal_labels": float(np.mean(a.labels_ == b.labels_)),
                "objective_rel_diff": (b.inertia_ - a.inertia_) / a.inertia_,
                "rows_rechecked": counts["rows_rechecked"] / rows,
                "distances_per_row": counts["distances"] / rows,
                "float32_tasks": counts["float32_tasks"],
            }
            results["cases"].append(case)
            print(
                f"{layer:5} N={case['n']:6} D={case['d']:5} K={k:5}: bfloat16 / float32 time "
                f"{case['bfloat16_over_float32']:.2f} ({case['float32_seconds']:.3f} s float32), "
                f"equal labels {case['equal_labels']:.4f}, "
                f"objective {case['objective_rel_diff']:+.1e}, "
                f"re-checked {case['rows_rechecked']:.3f} of rows, "
                f"{case['distances_per_row']:.2f} distances per row, "
                f"{case['float32_tasks']} float32 tasks",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(results, indent=2))
    results["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
