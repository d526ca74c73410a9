"""k-means speed and quality: clusterfit KMeans vs faiss.Kmeans vs scikit-learn KMeans (§3).

In memory, on the same synthetic Gaussian-mixture data, from the same initial centroids and in the
same process, it times

* ``ours``: ``clusterfit.cluster.KMeans(backend="faiss")`` -- n_iter Lloyd iterations plus the final
  assignment that gives ``labels_``;
* ``faiss``: ``faiss.Kmeans.train`` called directly (every point used: max_points_per_centroid
  raised), plus one ``index.search`` for the labels, i.e. the same work;
* ``sklearn``: ``sklearn.cluster.KMeans(n_init=1, algorithm="lloyd", tol=0)`` with the same
  ``max_iter`` (skipped where it would take too long: see ``--sklearn-max-gflop``);
* ``ours_torch`` (``--torch``): the torch backend (on ``--torch-device``, default CPU).

Repeats are interleaved (ours, faiss, sklearn, ours, ...) and the median is reported. Figures:
time ratio ours / faiss (whole fit with labels, and per Lloyd iteration), relative objective
difference to faiss (final objective: sum of squared distances of the final assignment).

Out of core, a child process with an address-space budget (``RLIMIT_DATA`` = its data size after
imports + ``--ooc-budget-mb``; the read-only file mapping is not charged) clusters a ``.npy`` memmap
larger than that budget: k-means on an in-memory subsample, then ``refine_iter`` iterations
streamed over all rows. Reported: peak RSS, and rows per second per streamed iteration against
faiss.Kmeans's rows per second per iteration in memory (same D and K).

Targets: in memory, ours <= 1.05x faiss's time with an objective within 0.5%; streaming, >= 0.8x
faiss's per-iteration throughput.

    python benchmarks/kmeans.py --quick          # < 1 minute
    python benchmarks/kmeans.py --repeats 3      # full sizes (tens of minutes on 2 cores)

Writes benchmarks/results/kmeans.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL_CASES = [(100_000, 128, 1000, 10), (100_000, 512, 1000, 10), (50_000, 2048, 16_000, 2)]
QUICK_CASES = [(20_000, 64, 100, 10), (20_000, 128, 500, 5)]
FULL_OOC = dict(
    n=5_000_000,
    d=128,
    k=1000,
    subsample=500_000,
    n_iter=5,
    refine_iter=2,
    budget_mb=1024,
    faiss_rows=500_000,
)
QUICK_OOC = dict(
    n=2_000_000,
    d=64,
    k=256,
    subsample=200_000,
    n_iter=5,
    refine_iter=2,
    budget_mb=384,
    faiss_rows=200_000,
)


def set_threads(n: int) -> None:
    import faiss
    import torch

    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)


def mixture(n: int, d: int, k: int, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """n x d float32 Gaussian mixture: k centres ~ N(0, I), unit-variance noise, made in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    X = np.empty((n, d), dtype=np.float32) if out is None else out
    step = 100_000
    for a in range(0, n, step):
        b = min(a + step, n)
        r = np.random.default_rng([seed, a])
        X[a:b] = centres[r.integers(k, size=b - a)] + r.standard_normal((b - a, d), np.float32)
    return X


def faiss_objective(X: np.ndarray, centroids: np.ndarray) -> tuple[float, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(X.shape[1])
    index.add(centroids)
    dist, idx = index.search(X, 1)
    return float(dist.astype(np.float64).sum()), idx.ravel()


def run_ours(X, init, n_iter, backend, device=None):
    from clusterfit.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(
        init.shape[0], n_iter=n_iter, init=init, backend=backend, device=device, progress=False
    ).fit(X)
    total = time.perf_counter() - t0
    per_iter = statistics.median(h["seconds"] for h in km.history_)
    return {"seconds": total, "per_iter": per_iter, "objective": km.inertia_}


def run_faiss(X, init, n_iter):
    import faiss

    n, d = X.shape
    k = init.shape[0]
    km = faiss.Kmeans(
        d, k, niter=n_iter, max_points_per_centroid=math.ceil(n / k) + 1, verbose=False
    )
    t0 = time.perf_counter()
    km.train(X, init_centroids=init)
    train = time.perf_counter() - t0
    objective, _ = faiss_objective(X, km.centroids)
    total = time.perf_counter() - t0
    return {
        "seconds": total,
        "per_iter": train / n_iter,
        "train_seconds": train,
        "objective": objective,
    }


def run_sklearn(X, init, n_iter, threads):
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        t0 = time.perf_counter()
        km = SkKMeans(
            init.shape[0], init=init, n_init=1, max_iter=n_iter, algorithm="lloyd", tol=0.0
        ).fit(X)
        total = time.perf_counter() - t0
    return {
        "seconds": total,
        "per_iter": total / (km.n_iter_ + 1),
        "objective": km.inertia_,
        "n_iter": int(km.n_iter_),
    }


def bench_case(n, d, k, n_iter, args) -> dict[str, Any]:
    X = mixture(n, d, k, seed=n + d + k)
    init = X[np.random.default_rng(0).choice(n, k, replace=False)].copy()
    gflop = 2.0 * n * k * d * (n_iter + 1) / 1e9
    methods = ["ours", "faiss"]
    sklearn_note = None
    if args.no_sklearn:
        sklearn_note = "skipped (--no-sklearn)"
    elif gflop > args.sklearn_max_gflop:
        sklearn_note = f"skipped: {gflop:.0f} GFLOP > --sklearn-max-gflop {args.sklearn_max_gflop}"
    else:
        methods.append("sklearn")
    if args.torch:
        methods.append("ours_torch")
    repeats = args.repeats if gflop <= args.single_repeat_gflop else 1
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            if m == "ours":
                runs[m].append(run_ours(X, init, n_iter, "faiss"))
            elif m == "ours_torch":
                runs[m].append(run_ours(X, init, n_iter, "torch", args.torch_device))
            elif m == "faiss":
                runs[m].append(run_faiss(X, init, n_iter))
            else:
                runs[m].append(run_sklearn(X, init, n_iter, args.threads))
    res: dict[str, Any] = {
        "n": n,
        "d": d,
        "k": k,
        "n_iter": n_iter,
        "repeats": repeats,
        "gflop_per_fit": round(gflop, 1),
        "sklearn": sklearn_note,
    }
    for m, rs in runs.items():
        res[m] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "per_iter": statistics.median(r["per_iter"] for r in rs),
            "objective": rs[0]["objective"],
            "all_seconds": [round(r["seconds"], 4) for r in rs],
        }
        if m == "sklearn":
            res[m]["n_iter"] = rs[0]["n_iter"]
    ref = res["faiss"]
    for m in methods:
        if m != "faiss":
            res[m]["time_ratio_vs_faiss"] = res[m]["seconds"] / ref["seconds"]
            res[m]["per_iter_ratio_vs_faiss"] = res[m]["per_iter"] / ref["per_iter"]
            res[m]["objective_rel_diff_vs_faiss"] = (res[m]["objective"] - ref["objective"]) / ref[
                "objective"
            ]
    res["meets_target"] = bool(
        res["ours"]["time_ratio_vs_faiss"] <= 1.05
        and abs(res["ours"]["objective_rel_diff_vs_faiss"]) <= 0.005
    )
    return res


# ------------------------------------------------------------------------------ out of core


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def ooc_child(path: str, cfg: dict[str, Any], threads: int, out: str) -> None:
    """Runs in a child process: cap the data segment, cluster the memmap, report peak RSS."""
    set_threads(threads)
    from clusterfit.cluster import KMeans

    base_data_kb, base_rss_kb = status_kb("VmData"), status_kb("VmRSS")
    cap = base_data_kb * 1024 + cfg["budget_mb"] * (1 << 20)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    X = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    km = KMeans(
        cfg["k"],
        n_iter=cfg["n_iter"],
        subsample=cfg["subsample"],
        refine_iter=cfg["refine_iter"],
        backend="faiss",
        seed=0,
        progress=False,
        chunk_size=cfg.get("chunk_size"),
    ).fit(X)
    total = time.perf_counter() - t0
    refine = [h["seconds"] for h in km.history_ if h["phase"] == "refine"]
    train = [h["seconds"] for h in km.history_ if h["phase"] == "train"]
    result = {
        "seconds": total,
        "refine_seconds_per_iter": statistics.median(refine),
        "train_seconds_per_iter": statistics.median(train),
        "rows_per_second_streamed": X.shape[0] / statistics.median(refine),
        "baseline_vmdata_mb": base_data_kb / 1024,
        "baseline_rss_mb": base_rss_kb / 1024,
        "rlimit_data_mb": cap / (1 << 20),
        # VmHWM: this process's peak resident set. (ru_maxrss is not used: Linux carries the
        # parent's high-water mark over fork/exec into it.)
        "peak_rss_mb": status_kb("VmHWM") / 1024,
        "objective": km.inertia_,
    }
    Path(out).write_text(json.dumps(result))


def bench_ooc(cfg: dict[str, Any], args) -> dict[str, Any]:
    n, d, k = cfg["n"], cfg["d"], cfg["k"]
    tmp = Path(tempfile.mkdtemp(prefix="kmeans_ooc_", dir=args.tmp_dir))
    path = tmp / "x.npy"
    try:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        mixture(n, d, k, seed=7, out=mm)
        mm.flush()
        del mm
        file_mb = path.stat().st_size / (1 << 20)
        out = tmp / "child.json"
        cmd = [
            sys.executable,
            __file__,
            "--ooc-child",
            str(path),
            json.dumps(cfg),
            str(args.threads),
            str(out),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            log = (proc.stdout + proc.stderr)[-2000:]
            return {"error": f"child exit status {proc.returncode}: {log}", "file_mb": file_mb}
        child = json.loads(out.read_text())
        # faiss.Kmeans in memory on the first rows of the same file: rows / second / iteration
        X = np.array(np.load(path, mmap_mode="r")[: cfg["faiss_rows"]])
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    init = X[np.random.default_rng(0).choice(len(X), k, replace=False)].copy()
    faiss_runs = [run_faiss(X, init, cfg["n_iter"]) for _ in range(args.repeats)]
    faiss_per_iter = statistics.median(r["train_seconds"] / cfg["n_iter"] for r in faiss_runs)
    faiss_rate = len(X) / faiss_per_iter
    ratio = child["rows_per_second_streamed"] / faiss_rate
    return {
        **{key: cfg[key] for key in ("n", "d", "k", "subsample", "n_iter", "refine_iter")},
        "file_mb": file_mb,
        "budget_mb": cfg["budget_mb"],
        "file_larger_than_budget": file_mb > cfg["budget_mb"],
        "file_larger_than_rlimit_data": file_mb > child["rlimit_data_mb"],
        "file_larger_than_peak_rss": file_mb > child["peak_rss_mb"],
        **child,
        "peak_rss_over_baseline_mb": child["peak_rss_mb"] - child["baseline_rss_mb"],
        "faiss_in_memory_rows": len(X),
        "faiss_rows_per_second": faiss_rate,
        "throughput_ratio_vs_faiss": ratio,
        "meets_target": bool(ratio >= 0.8),
        "note": "the memmap was just written, so its pages are likely in the OS page cache",
    }


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--cases",
        nargs="*",
        default=None,
        metavar="NxDxKxITER",
        help="override the in-memory cases, e.g. 100000x128x1000x10",
    )
    ap.add_argument(
        "--sklearn-max-gflop",
        type=float,
        default=2000.0,
        help="skip scikit-learn for cases with more GEMM work per fit",
    )
    ap.add_argument(
        "--single-repeat-gflop",
        type=float,
        default=2000.0,
        help="run cases with more work per fit once",
    )
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--torch", action="store_true", help="also time the torch backend")
    ap.add_argument("--torch-device", default="cpu", help="device of the torch backend (--torch)")
    ap.add_argument("--no-ooc", action="store_true", help="skip the out-of-core case")
    ap.add_argument("--tmp-dir", default=None, help="where to write the out-of-core memmap")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kmeans.json"))
    ap.add_argument("--ooc-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ooc_child:
        path, cfg, threads, out = args.ooc_child
        ooc_child(path, json.loads(cfg), int(threads), out)
        return

    import faiss
    import sklearn
    import torch

    set_threads(args.threads)
    if args.cases:
        cases = [tuple(int(v) for v in c.split("x")) for c in args.cases]
    else:
        cases = QUICK_CASES if args.quick else FULL_CASES
    run_ours(mixture(2000, 16, 8, 0), mixture(8, 16, 8, 1), 2, "faiss")  # warm-up
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "quick": args.quick,
        "threads": args.threads,
        "torch_device": args.torch_device if args.torch else None,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "machine": platform.processor() or platform.machine(),
        "versions": {
            "faiss": faiss.__version__,
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "in_memory": [],
        "out_of_core": None,
    }
    print(
        f"threads={args.threads} (faiss omp, torch, sklearn threadpool); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'N':>8} {'D':>5} {'K':>6} {'it':>3} | {'ours s':>8} {'faiss s':>8} "
        f"{'sklearn s':>9} | {'ours/faiss':>10} {'/iter':>6} | {'d obj ours':>10} "
        f"{'d obj skl':>10} | target"
    )
    print(header)
    print("-" * len(header))
    for n, d, k, n_iter in cases:
        r = bench_case(n, d, k, n_iter, args)
        results["in_memory"].append(r)
        skl = r.get("sklearn")
        skl_s = f"{r['sklearn']['seconds']:9.2f}" if isinstance(skl, dict) else f"{'skipped':>9}"
        skl_o = (
            f"{r['sklearn']['objective_rel_diff_vs_faiss']:+10.2e}"
            if isinstance(skl, dict)
            else f"{'-':>10}"
        )
        print(
            f"{n:>8} {d:>5} {k:>6} {n_iter:>3} | {r['ours']['seconds']:8.2f} "
            f"{r['faiss']['seconds']:8.2f} {skl_s} | {r['ours']['time_ratio_vs_faiss']:10.3f} "
            f"{r['ours']['per_iter_ratio_vs_faiss']:6.3f} | "
            f"{r['ours']['objective_rel_diff_vs_faiss']:+10.2e} {skl_o} | "
            f"{'met' if r['meets_target'] else 'MISSED'}"
        )
        if isinstance(skl, str):
            print(f"{'':>25}sklearn {skl}")
        if "ours_torch" in r:
            print(
                f"{'':>25}torch backend ({args.torch_device}): "
                f"{r['ours_torch']['seconds']:.2f} s, "
                f"{r['ours_torch']['time_ratio_vs_faiss']:.2f}x faiss"
            )
        sys.stdout.flush()
        save(results, t_start, args.out)
    if not args.no_ooc:
        cfg = QUICK_OOC if args.quick else FULL_OOC
        o = bench_ooc(cfg, args)
        results["out_of_core"] = o
        if "error" in o:
            print("out-of-core run failed:", o["error"])
        else:
            print(
                f"\nout of core: {o['n']} x {o['d']} memmap ({o['file_mb']:.0f} MB), K={o['k']}, "
                f"subsample {o['subsample']}, {o['n_iter']} + {o['refine_iter']} streamed iters"
            )
            print(
                f"  RLIMIT_DATA {o['rlimit_data_mb']:.0f} MB (data after imports "
                f"{o['baseline_vmdata_mb']:.0f} MB + budget {o['budget_mb']} MB); "
                f"peak RSS {o['peak_rss_mb']:.0f} MB ({o['peak_rss_over_baseline_mb']:.0f} MB "
                f"over the {o['baseline_rss_mb']:.0f} MB after imports)"
            )
            print(
                f"  streamed {o['rows_per_second_streamed']:.3g} rows/s per iteration vs faiss "
                f"in memory {o['faiss_rows_per_second']:.3g} rows/s: "
                f"{o['throughput_ratio_vs_faiss']:.2f}x "
                f"({'met' if o['meets_target'] else 'MISSED'} >= 0.8x)"
            )
    save(results, t_start, args.out)
    print(f"\n{results['seconds']:.0f} s; wrote {args.out}")


def save(results: dict[str, Any], t_start: float, path: str) -> None:
    """Write the results so far (after every case, so that a cut-short run keeps its figures)."""
    results["seconds"] = time.perf_counter() - t_start
    results["load_average_at_end"] = list(os.getloadavg())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
