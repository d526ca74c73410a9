"""Wall time of every recipe in configs/ run for real (not --smoke) on the data it names.

Each recipe runs as ``clusterfit run --config configs/<name>.yaml`` in its own process, into a
fresh folder under ``--out-dir``; its wall time, stage times and the printed N_pre / N_cf table go
to ``benchmarks/results/recipes.json``. A recipe already in that file is skipped unless ``--redo``,
so an interrupted sweep resumes where it stopped.

    python benchmarks/recipes.py                 # all recipes
    python benchmarks/recipes.py demo rotnet     # some
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipes.json"


def stage_seconds(run_dirs: list[Path]) -> dict[str, float]:
    """Seconds of each stage, from the stages' meta.json."""
    out = {}
    for run_dir in run_dirs:
        for meta in sorted(run_dir.glob("*/meta.json")):
            out[meta.parent.name] = json.loads(meta.read_text())["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (default: every configs/*.yaml)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/clusterfit-recipes"))
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args()
    names = args.recipes or sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in names:
        if name in results and not args.redo:
            print(f"{name}: {results[name]['wall_seconds']:.0f} s (recorded)")
            continue
        out_dir = args.out_dir / name
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
        cmd = [
            sys.executable,
            "-m",
            "clusterfit.cli",
            "run",
            "--config",
            str(ROOT / "configs" / f"{name}.yaml"),
            f"out_dir={out_dir}",
            "progress=false",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        table = proc.stdout[proc.stdout.find("[probe") :].split("\nreport:")[0].strip()
        results[name] = {
            "wall_seconds": round(wall, 1),
            "stages": stage_seconds(list(out_dir.iterdir())),
            "table": table,
            "threads": os.cpu_count(),
        }
        print(f"{name}: {wall:.0f} s\n{table}\n", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
