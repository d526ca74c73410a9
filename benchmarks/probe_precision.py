"""Linear probes in float32 against bfloat16 on the networks of a finished run.

For every probed network (random floor, N_pre, N_cf, ...) and every layer of ``probe.layers``,
the features are extracted once, then the probe protocol (lr sweep on a validation split, final
classifier, test top-1) runs with ``precision=float32`` and ``precision=bfloat16``, alternately,
for each of ``--seeds`` (the probe's seed: its validation split and batch order). Written: the
test top-1 of both, their difference, and the seconds of each, to
``benchmarks/results/probe_precision.json``.

    clusterfit run out_dir=/tmp/cf-demo                    # the demo, once
    python benchmarks/probe_precision.py out_dir=/tmp/cf-demo --seeds 0 1 2
    python benchmarks/probe_precision.py --peak-only       # the GEMM peaks, both precisions
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from clusterfit.config import load_config
from clusterfit.evaluate.linear import linear_probe, native_bfloat16
from clusterfit.stages import probe
from clusterfit.stages.context import Context

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "probe_precision.json"
PRECISIONS = ("float32", "bfloat16")


def gemm_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n matrix product (best of ``repeats``) in float32 and bfloat16 at 1
    thread and at torch's thread count: the rates the probe's products are measured against."""
    many = torch.get_num_threads()
    out = {}
    try:
        for threads in sorted({1, many}):
            torch.set_num_threads(threads)
            for dtype in (torch.float32, torch.bfloat16):
                a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
                torch.mm(a, b)
                best = math.inf
                for _ in range(repeats):
                    start = time.perf_counter()
                    torch.mm(a, b)
                    best = min(best, time.perf_counter() - start)
                name = str(dtype).removeprefix("torch.")
                out[f"{name}_{threads}_threads"] = round(2 * n**3 / best / 1e9, 1)
    finally:
        torch.set_num_threads(many)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value settings of the run (out_dir=...)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--peak-only", action="store_true", help="print the GEMM peaks and stop")
    args = parser.parse_args()
    if args.peak_only:
        print(json.dumps(gemm_peak(), indent=1))
        return

    cfg = load_config(args.config, [*args.overrides, "progress=false"])
    ctx = Context.create(cfg)
    pc = cfg.probe
    rows: list[dict[str, Any]] = []
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for m in probe.probed(ctx):
        m.stage.require(m.command)
        for target, (train, train_y, test, test_y) in probe.targets(ctx):
            net = probe.load_net(ctx, m)
            if m.kind == "random":
                net = probe.random_floor(ctx, net, train)
            tr, te = probe.cell_features(ctx, net, m.name, train, test, list(pc.layers))
            for layer in pc.layers:
                for seed in args.seeds:
                    row: dict[str, Any] = {
                        "model": m.name,
                        "target": target.name,
                        "layer": layer,
                        "seed": seed,
                        "dims": int(tr[layer].shape[1]),
                    }
                    order = PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]
                    for precision in order:
                        start = time.perf_counter()
                        protocol = probe.linear_protocol(ctx)
                        protocol.update(seed=seed, progress=False, precision=precision)
                        res = linear_probe(tr[layer], train_y, te[layer], test_y, **protocol)
                        took = time.perf_counter() - start
                        seconds[precision].append(took)
                        row[precision] = {"top1": res["top1"], "lr": res["lr"], "seconds": took}
                    row["difference"] = row["bfloat16"]["top1"] - row["float32"]["top1"]
                    rows.append(row)
                    print(
                        f"{m.name:>8} {layer:>6} seed {seed}: float32 "
                        f"{row['float32']['top1']:.2f} bfloat16 {row['bfloat16']['top1']:.2f} "
                        f"({row['difference']:+.2f}); {row['float32']['seconds']:.2f} s vs "
                        f"{row['bfloat16']['seconds']:.2f} s",
                        flush=True,
                    )
    diffs = [abs(r["difference"]) for r in rows]
    same_lr = sum(r["float32"]["lr"] == r["bfloat16"]["lr"] for r in rows)
    summary = {
        "probes": len(rows),
        "max_abs_difference": max(diffs),
        "mean_abs_difference": statistics.mean(diffs),
        "mean_difference": statistics.mean(r["difference"] for r in rows),
        "same_lr_chosen": same_lr,
        "seconds_total": {p: round(sum(v), 2) for p, v in seconds.items()},
        "speedup_median": statistics.median(
            f / b for f, b in zip(seconds["float32"], seconds["bfloat16"], strict=True)
        ),
    }
    doc = {
        "what": __doc__.splitlines()[0],
        "command": "python benchmarks/probe_precision.py "
        + " ".join(args.overrides)
        + f" --seeds {' '.join(map(str, args.seeds))}",
        "config": args.config,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "native_bfloat16": native_bfloat16(ctx.device),
            "gemm_peak_gflops": gemm_peak(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
