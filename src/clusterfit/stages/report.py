"""Stage 6: tables and the paper's figure types from one or more runs' probe results.

``clusterfit report RUN [RUN ...]`` gathers the records of each run's ``probe/results.json`` and
writes ``index.md``, ``index.html`` and PNG plots (layer-wise accuracy, Fig. 4; accuracy against
K, Tables 4/5/7; against label noise, Fig. 3) whenever the runs contain those sweeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clusterfit.artifacts import fingerprint, read_json
from clusterfit.errors import ClusterFitError


def gather(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Every probe record of ``run_dirs``, each tagged with its run's name."""
    records: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        paths = sorted(Path(run_dir).glob("probe*/results.json"))
        if not paths:
            raise ClusterFitError(
                f"{run_dir} has no probe results (no probe/results.json): finish the run first "
                "with `clusterfit run` (or `clusterfit probe`)"
            )
        seen = set()
        for path in paths:
            results = read_json(path)
            for r in results["records"]:
                # N_pre's cells are shared by every K of a sweep: count each record once.
                key = (r["model"], r["layer"], r["target"], r["protocol"], r["metric"], r["k"])
                if key in seen:
                    continue
                seen.add(key)
                records.append({**r, "run": results.get("run", Path(run_dir).name)})
    return records


def default_folder(run_dirs: list[Path]) -> Path:
    """Where a report goes without ``--out``: ``RUN/report`` for one run; for several, a folder
    of its own beside the first (``runs/report-A+B``), so no run's own report is overwritten."""
    runs = [Path(r) for r in run_dirs]
    if len(runs) == 1:
        return runs[0] / "report"
    names = "+".join(r.name for r in runs)
    if len(names) > 80:
        names = f"{len(runs)}-runs-{fingerprint(sorted(map(str, runs)))[:10]}"
    return runs[0].parent / f"report-{names}"


def run(run_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write the report of ``run_dirs`` into ``out_dir``; returns what ``write_report`` returns."""
    from clusterfit.report import write_report  # matplotlib loads only when a report is made

    return write_report(gather(run_dirs), Path(out_dir))
