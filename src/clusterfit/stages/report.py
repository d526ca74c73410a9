"""Stage 6: the report of one or more finished runs (``clusterfit report RUN [RUN ...]``).

One run: ``RUN/report/index.html`` (and ``index.md``): the run's settings in words, the layer
table random | N_pre | N_cf | N_cf - N_pre with a verdict per target, the clusters (sizes,
NMI / ARI / purity, members nearest the centroid and random members as thumbnails), the training
curves and the provenance. Several runs: a report of its own folder (never a run's ``report/``)
that groups runs by their full settings (only true seeds averaged) and draws the paper's sweeps
(layer-wise accuracy, Fig. 4; accuracy against K, Tables 4/5/7; against label noise, Fig. 3).

Every run also records what made it (:func:`record_run`): ``RUN/run.json`` (the resolved config,
the command line, when) and ``RUN/config.yaml``, from which ``clusterfit run --config`` remakes it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clusterfit.artifacts import fingerprint, write_json, write_text
from clusterfit.config import RunConfig, to_yaml
from clusterfit.errors import ConfigError

#: What :func:`record_run` writes in the run folder.
RUN_RECORD = "run.json"
RUN_CONFIG = "config.yaml"


def record_run(cfg: RunConfig, argv: list[str] | None = None) -> None:
    """Write ``run.json`` (config, command line, time) and ``config.yaml`` into the run folder.

    The report reads them to describe the run, to load its dataset for the cluster thumbnails
    and to print the command that reproduces it.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / RUN_CONFIG, to_yaml(cfg))
    write_json(
        run_dir / RUN_RECORD,
        {
            "config": asdict(cfg),
            "argv": list(sys.argv if argv is None else argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


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


def run(run_dirs: list[Path], out_dir: Path, *, progress: bool = False) -> dict[str, Any]:
    """Write the report of ``run_dirs`` into ``out_dir``; returns what
    :func:`clusterfit.report.write_run_report` returns.

    Raises:
        ConfigError: several runs and ``out_dir`` is one run's own ``report/`` folder, or a run
            folder is named twice.
    """
    from clusterfit.report import write_run_report  # matplotlib loads only when a report is made

    runs = [Path(r) for r in run_dirs]
    resolved = [r.resolve() for r in runs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("a run folder is named twice; name each run once")
    out = Path(out_dir)
    if len(runs) > 1 and any(out.resolve() == r / "report" for r in resolved):
        raise ConfigError(
            f"--out {out} is a run's own report folder; a report over several runs goes to a "
            "folder of its own (leave --out out for runs/report-A+B)"
        )
    return write_run_report(runs, out, progress=progress)
