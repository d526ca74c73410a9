"""The inner pieces behind the k-means and probe figures, each timed against its alternative.

(a) One fused k-means assignment pass (``FusedAssigner.accumulate``, sums included, the
    float32 screen whose GEMM the task length shapes) over
    2^26 / D random rows, by rows per task (256 .. 2048; ``fused_task_rows`` picks one), at
    K=1000 with D=128 and D=512, and K=D=256 (the streamed case).
(b) The same pass at D=2048, K=4096 on several threads, with the centroid sums grouped by
    cluster after the assignment (the default there) and with one float64 copy per worker.
(c) One SGD update of a stacked probe (30 x 9216 weights, bfloat16 gradient): the fused pass of
    ``_sgd_kernel`` against the five torch operations it replaces.
(d) Filling a fresh 5000 x 9216 float32 array batch by batch, allocated by numpy and by torch,
    every repeat reported: numpy asks for transparent huge pages, and where the host cannot
    grant them at once the first touch stalls on memory compaction (from run to run).

Each figure is the median of several repeats, the alternatives interleaved in one process.
Figures go to ``benchmarks/results/kernels.json``.

    python benchmarks/kernels.py [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "kernels.json"


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds of each function, median over ``repeats`` rounds that call each one in turn."""
    for f in fns.values():
        f()  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_rows(d: int) -> torch.Tensor:
    """2^26 / D standard normal float32 rows of D features (256 MiB)."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.standard_normal(((1 << 26) // d, d), dtype=np.float32))


def assignment_pass(
    x: torch.Tensor, k: int, threads: int, task_rows: int | None = None
) -> Callable[[], object]:
    """One accumulating pass of the fused assigner over the rows x, K centroids drawn from them."""
    from clusterfit.cluster.assign import FusedAssigner

    d = x.shape[1]
    pick = np.random.default_rng(1).choice(len(x), k, replace=False)
    assigner = FusedAssigner(False, n_threads=threads, task_rows=task_rows, screen="float32")
    assigner.set_centroids(x[torch.from_numpy(pick)])
    sums = torch.zeros((k, d), dtype=torch.float64)
    stats = torch.zeros(k + 1, dtype=torch.float64)

    def run() -> None:
        sums.zero_()
        stats.zero_()
        assigner.start_pass(sums, stats)
        assigner.accumulate(x, sums, stats)
        assigner.finish_pass(sums, stats)

    return run


def bench_task_rows(threads: list[int], repeats: int) -> list[dict[str, object]]:
    from clusterfit.cluster.assign import fused_task_rows

    out = []
    for d, k in [(128, 1000), (512, 1000), (256, 256)]:
        x = random_rows(d)
        for t in threads:
            torch.set_num_threads(t)
            fns = {str(r): assignment_pass(x, k, t, r) for r in (256, 512, 1024, 2048)}
            sec = medians(fns, repeats)
            chosen = fused_task_rows(k, d, (1 << 26) // d, t)
            row = {"d": d, "k": k, "threads": t, "default_rows": chosen, "seconds": sec}
            out.append(row)
            rel = " ".join(f"{r}: {s / sec['512']:.2f}x" for r, s in sec.items())
            print(f"(a) D={d} K={k} {t}t, time against 512-row tasks: {rel} (default {chosen})")
    return out


def bench_grouped(threads: list[int], repeats: int) -> list[dict[str, object]]:
    import clusterfit.cluster.assign as assign

    out = []
    default = assign._GROUPED_SUMS_ELEMS
    rows = random_rows(2048)
    for t in [t for t in threads if t > 1]:
        torch.set_num_threads(t)
        for n in (10_000, len(rows)):  # 10k: the in-memory case of benchmarks/kmeans.py
            run = assignment_pass(rows[:n].clone(), 4096, t)

            def per_worker(run: Callable[[], object] = run) -> None:
                assign._GROUPED_SUMS_ELEMS = 1 << 62
                try:
                    run()
                finally:
                    assign._GROUPED_SUMS_ELEMS = default

            sec = medians({"grouped": run, "per_worker": per_worker}, repeats)
            out.append({"n": n, "d": 2048, "k": 4096, "threads": t, "seconds": sec})
            ratio = sec["grouped"] / sec["per_worker"]
            print(f"(b) N={n} D=2048 K=4096 {t}t: grouped sums {ratio:.2f}x the per-worker time")
    return out


def bench_sgd(repeats: int) -> dict[str, object]:
    from clusterfit.evaluate.linear import _bits, _sgd_kernel

    torch.set_num_threads(1)
    r, d, wd, m = 30, 9216, 5e-4, 0.9
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(r, d, generator=gen).bfloat16()
    w, buf = torch.randn(r, d, generator=gen), torch.randn(r, d, generator=gen)
    lr = torch.full((r, 1), 0.01)
    w_bits = torch.zeros(r, d, dtype=torch.bfloat16)
    kernel = _sgd_kernel()
    args = (
        np.zeros((0, 0), np.float32),
        _bits(grad),
        w.numpy(),
        buf.numpy(),
        lr.squeeze(1).numpy(),
        np.float32(wd),
        np.float32(m),
        _bits(w_bits),
    )

    def torch_ops() -> None:
        step = grad.float().add_(w, alpha=wd).add_(buf, alpha=m)
        w.addcmul_(step, lr, value=-1.0)
        w.to(torch.bfloat16)

    def many(f: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(200):
                f()

        return run

    sec = medians({"fused": many(lambda: kernel(*args)), "torch_ops": many(torch_ops)}, repeats)
    per = {name: s / 200 * 1e6 for name, s in sec.items()}
    print(
        f"(c) SGD update 30 x 9216: fused {per['fused']:.0f} us, "
        f"torch ops {per['torch_ops']:.0f} us"
    )
    return {"rows": r, "dims": d, "microseconds": per}


def bench_fill(repeats: int) -> dict[str, object]:
    torch.set_num_threads(2)
    n, d, batch = 5000, 9216, 256
    src = torch.randn(batch, d)

    def fill(make: Callable[[], np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            out = make()
            for a in range(0, n, batch):
                torch.from_numpy(out[a : a + batch]).copy_(src[: min(batch, n - a)])

        return run

    fns = {
        "numpy_empty": fill(lambda: np.empty((n, d), dtype=np.float32)),
        "torch_empty": fill(lambda: torch.empty((n, d)).numpy()),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):  # every call allocates afresh: no warm-up to leave out
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            times[name].append(round(time.perf_counter() - start, 4))
    for name, ts in times.items():
        print(f"(d) fill a fresh {n} x {d} float32 array, {name}: {min(ts):.3f}-{max(ts):.3f} s")
    return {"n": n, "d": d, "seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    results = {
        "task_rows": bench_task_rows(args.threads, args.repeats),
        "grouped_sums": bench_grouped(args.threads, args.repeats),
        "sgd_update": bench_sgd(args.repeats),
        "fill": bench_fill(args.repeats),
        "load_average": list(os.getloadavg()),
    }
    results["seconds"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['seconds']:.0f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
