"""The command line of the paper benchmark: ``python -m benchmarks.paper [--quick | --overfit |
--teacher | --gpu] [--list | --only WORDS | --pilot | --report-only | --throughput]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchmarks.paper.plan import (
    REPO,
    Paths,
    budget_line,
    build_plan,
    default_ks,
    estimate,
    filter_plan,
)
from benchmarks.paper.runner import (
    atomic_json,
    load_doc,
    measure_throughput,
    report_only,
    run_suite,
)
from benchmarks.paper.scale import SCALES, Scale


def print_plan(scale: Scale, only: Sequence[str], runs: Path | None = None) -> None:
    """The plan with each step's estimated minutes and its state in the suite's JSON."""
    plan = build_plan(scale)
    paths = Paths.for_scale(scale, runs)
    doc = load_doc(paths)
    selection = doc.get("selection", {})
    k_default = default_ks(scale, selection)
    times = estimate(plan, scale, k_default)
    keep = {s.name for s in filter_plan(plan, only)}
    steps = doc.get("steps", {})
    total = 0.0
    print(f"{scale.name} suite: {len(plan)} steps, runs under {paths.runs}")
    print(f"K picked on validation: {k_default} ({'picked' if selection else 'assumed'})")
    for step, t in zip(plan, times, strict=True):
        if step.name not in keep:
            continue
        state = "done" if steps.get(step.name) else "todo"
        if state == "todo":
            total += t
        print(f"  {state}  {t / 60:6.1f} min  {step.name}")
    print(f"left: {total / 3600:.2f} h ({budget_line(scale, plan)})")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.paper import __doc__ as doc

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.paper", description=(doc or "").split("\n\n")[0]
    )
    for name in ("quick", "overfit", "teacher", "gpu"):
        ap.add_argument(f"--{name}", action="store_true", help=f"the {name} suite")
    ap.add_argument("--scale", choices=sorted(SCALES), default=None, help="a suite by name")
    ap.add_argument(
        "--regime", choices=("control", "overfit", "teacher"), default=None, help="= --scale"
    )
    ap.add_argument("--list", action="store_true", help="print the plan with time estimates")
    ap.add_argument("--only", nargs="*", default=[], help="experiment/role/run words to select")
    ap.add_argument("--pilot", action="store_true", help="only the signal and selection runs")
    ap.add_argument("--throughput", action="store_true", help="measure images/s, record it")
    ap.add_argument("--report-only", action="store_true", help="rebuild JSON/markdown/plots")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, default=None, help="where run folders live")
    ap.add_argument("--device", default=None, help="cpu | cuda | auto (default: the scale's)")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: by load)")
    args = ap.parse_args(argv)
    name = args.scale or {"control": "full", None: None}.get(args.regime, args.regime)
    for flag in ("quick", "overfit", "teacher", "gpu"):
        if getattr(args, flag):
            name = flag
    scale = SCALES[name or "full"]
    paths = Paths.for_scale(scale, args.runs)
    if args.list:
        print_plan(scale, args.only, args.runs)
        return 0
    if args.throughput:
        doc = load_doc(paths)
        doc["throughput"] = measure_throughput()
        atomic_json(paths.results_json, doc)
        return 0
    if args.report_only:
        report_only(scale, args.data_root, args.runs)
        return 0
    return run_suite(
        scale,
        args.only,
        args.data_root,
        args.progress,
        args.device,
        args.pilot,
        args.threads,
        args.runs,
    )
