"""Stage 6: tables and the paper's figure types from one or more runs' probe results.

``clusterfit report RUN [RUN ...]`` gathers the records of each run's ``probe/results.json`` and
writes ``index.md``, ``index.html`` and PNG plots (layer-wise accuracy, Fig. 4; accuracy against
K, Tables 4/5/7; against label noise, Fig. 3) whenever the runs contain those sweeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clusterfit.artifacts import fingerprint


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
    from clusterfit.report.tables import load_records

    return write_report(load_records(run_dirs), Path(out_dir))
