"""Random SIGKILLs across all stages of a small run: kills survived, artifacts identical, wrong
results served.

One uninterrupted run gives the reference artifacts. Then, ``--kills`` times: a stage is picked
(cycling through pretrain, extract, cluster, fit, probe in random order), it and the later stages
are removed, ``clusterfit run`` is killed with SIGKILL a random delay after that stage began, and
the same command is run again to its end. The goal: every kill survived, every rerun's artifacts
identical to the reference, no finished run serving other results.

    python benchmarks/faults.py --kills 10   # writes benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from clusterfit.faults import artifact_digests, inject, random_plan, run_to_end

SMALL = [
    "data.limit=256",
    "pretrain.train.epochs=3",
    "pretrain.train.batch_size=32",
    "cluster.k=10",
    "cluster.n_iter=10",
    "probe.layers=[res3,res4,res5]",
    "probe.targets.0.limit=200",
    "probe.targets.0.test_limit=100",
    "probe.n_updates=100",
    "progress=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=3.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "faults.json"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clusterfit-faults-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "CLUSTERFIT_CACHE": str(root / "cache")}
        if run_to_end(["run", *SMALL, f"out_dir={root / 'ref'}"], env) != 0:
            raise SystemExit("the reference run failed")
        reference = artifact_digests(root / "ref" / "demo")
        plan = random_plan(args.kills, args.seed, args.max_delay)
        report = inject(["run", *SMALL, f"out_dir={root / 'runs'}"], root / "runs" / "demo",
                        reference, plan, env)  # fmt: skip
    result = {
        "settings": SMALL,
        "kills_planned": args.kills,
        **{k: v for k, v in asdict(report).items() if k != "trials"},
        "trials": report.trials,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{'stage':<10}{'delay s':>8}{'killed':>8}{'rc':>4}{'identical':>11}")
    for t in report.trials:
        row = f"{t['stage']:<10}{t['delay']:>8.2f}{t['killed']!s:>8}{t['rc']:>4}"
        print(row + f"{t['identical']!s:>11}")
    print(
        f"kills landed {report.kills}/{args.kills}, survived {report.survived}, "
        f"identical {report.identical}, wrong results served {report.wrong_results_served}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
