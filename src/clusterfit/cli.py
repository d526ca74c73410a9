"""``clusterfit``: the command line. Subcommands map to ``stages.<x>.run``; nothing imports this.

    clusterfit run [--config F] [--smoke] [key=value ...]        the whole pipeline
    clusterfit run --launcher slurm|local [...]                  the same, as a submitit job
    clusterfit pretrain|extract|cluster|fit|probe [same options]  one stage
    clusterfit report RUN [RUN ...] [--out DIR]                   tables and plots
    clusterfit config [--config F] [key=value ...]                print the resolved config
    clusterfit models                                             model families, probe layers

User errors (bad config, missing data, K > N, ...) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from clusterfit.errors import ClusterFitError

STAGE_HELP = {
    "pretrain": "make N_pre (train a proxy objective, or take pre-trained weights)",
    "extract": "N_pre's features of every item of the dataset",
    "cluster": "k-means (or per-label / prototype) of the features into K clusters",
    "fit": "train N_cf from scratch on the cluster ids",
    "baselines": "the paper's baselines: N_pre trained 2x longer, distillation (if enabled)",
    "probe": "linear probes on frozen features of N_pre and N_cf, layer by layer",
}


def _config_args(p: argparse.ArgumentParser, runs: bool = True) -> None:
    p.add_argument("--config", "-c", help="a YAML recipe (default: the built-in demo recipe)")
    p.add_argument(
        "--smoke", action="store_true", help="a tiny subset, one epoch per stage: checks a recipe"
    )
    if runs:
        p.add_argument(
            "--redo",
            action="append",
            default=[],
            metavar="STAGE",
            help="delete this stage's folder and make it again (repeatable), e.g. --redo fit",
        )
        p.add_argument(
            "--no-wait",
            action="store_true",
            help="refuse, rather than wait, when another process is using the run folder",
        )
        p.add_argument(
            "--launcher",
            choices=("local", "slurm"),
            help="submit as a job through submitit (settings: launcher.*): slurm, or local "
            "(the same job on this machine)",
        )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. cluster.k=100")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterfit",
        description="ClusterFit (Yan et al., CVPR 2020): cluster a pre-trained network's features, "
        "re-train a network on the cluster ids, and compare both by linear probes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _config_args(sub.add_parser("run", help="run the whole pipeline (skipping finished stages)"))
    for name, text in STAGE_HELP.items():
        _config_args(sub.add_parser(name, help=text))
    rep = sub.add_parser("report", help="tables and plots from one or more finished runs")
    rep.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>)")
    rep.add_argument("--out", type=Path, help="output folder (default: <first run>/report)")
    _config_args(sub.add_parser("config", help="print the resolved config"), runs=False)
    sub.add_parser("models", help="the model families, their extras and the probe-layer rule")
    return parser


def _load(args: argparse.Namespace):
    from clusterfit.config import load_config, smoke

    cfg = load_config(args.config, args.overrides)
    return smoke(cfg) if args.smoke else cfg


def _run(args: argparse.Namespace) -> int:
    from clusterfit import distributed
    from clusterfit.launch.job import run_and_report

    cfg = _load(args)
    only = None if args.command == "run" else args.command
    if args.launcher:
        from clusterfit.launch import launch

        return launch(args.launcher, cfg, only=only, redo=args.redo, wait_lock=not args.no_wait)
    distributed.init_from_env()
    run_and_report(cfg, only, wait=not args.no_wait, redo=args.redo)
    return 0


def _os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path, the cause, what to do."""
    path = exc.filename or "?"
    cause = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: {cause}; free some space or choose another out_dir"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: {cause}; make it writable or choose another out_dir"
    if exc.errno == errno.ENOENT:
        return (
            f"{path}: {cause}; if it belonged to a finished stage, rerun with --redo STAGE "
            "(or delete that stage's folder)"
        )
    return f"{path}: {cause}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterfit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    if args.command is None:
        args = parser.parse_args(["run", *argv])
    try:
        if command == "models":
            from clusterfit.models.registry import describe_models

            print(describe_models())
            return 0
        if command == "config":
            from clusterfit.config import to_yaml

            print(to_yaml(_load(args)), end="")
            return 0
        if command == "report":
            from clusterfit.stages import report

            out = args.out or report.default_folder(args.runs)
            report.run(args.runs, out)
            print(f"report: {out / 'index.html'}")
            return 0
        return _run(args)
    except ClusterFitError as exc:
        print(f"clusterfit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment: a file gone, a folder not writable, a full disk
        print(f"clusterfit: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nclusterfit: interrupted; run the same command again to resume where it stopped",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
