"""Submitting a run through submitit: ``clusterfit run --launcher local|slurm``.

``slurm``: one sbatch job of ``launcher.nodes`` x ``launcher.tasks_per_node`` tasks (``srun``), with
the partition, time, memory, GPUs, account, QoS and constraint of ``cfg.launcher``; SLURM sends
the warning signal ``signal_delay_s`` before the time limit and submitit requeues the job
(``scontrol requeue``) after :meth:`~clusterfit.launch.job.PipelineJob.checkpoint`.

``local``: submitit's ``LocalExecutor`` on this machine (one node, ``tasks_per_node`` processes):
the same pickled job, the same task environment and the same requeue path (the job exits with
submitit's requeue status and its controller starts it again), so what runs on a cluster is tested
here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from clusterfit.config import RunConfig
from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.launch.job import PipelineJob, launcher_dir, record

#: The launchers ``--launcher`` accepts.
LAUNCHERS = ("local", "slurm")


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher needs submitit: pip install 'clusterfit[slurm]' (or pip install submitit)"
        ) from None
    return submitit


def make_executor(kind: str, cfg: RunConfig) -> Any:
    """A submitit executor for ``kind`` (``local`` | ``slurm``) with ``cfg.launcher``'s settings.

    Logs and pickles go to ``<launcher folder>/<job id>/``.
    """
    submitit = _import_submitit()
    la = cfg.launcher
    folder = launcher_dir(cfg) / "%j"
    if kind == "local":
        if la.nodes != 1:
            raise ConfigError(
                f"launcher.nodes={la.nodes}: the local launcher runs on this machine (one node); "
                "use --launcher slurm, or torchrun --nnodes (README: On a cluster)"
            )
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=la.max_requeues)
        params: dict[str, Any] = {
            "timeout_min": la.timeout_min,
            "tasks_per_node": la.tasks_per_node,
            "gpus_per_node": la.gpus_per_node,
            "signal_delay_s": la.signal_delay_s,
        }
        if la.setup:
            params["setup"] = list(la.setup)
        executor.update_parameters(**params)
        return executor
    if kind != "slurm":
        raise ConfigError(f"--launcher {kind}: choose one of {', '.join(LAUNCHERS)}")
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=la.max_requeues)
    except RuntimeError:  # submitit looks for srun
        raise ConfigError(
            "--launcher slurm: no 'srun' on this machine; submit from a SLURM login node "
            "(or use --launcher local)"
        ) from None
    params = {
        "job_name": f"clusterfit-{cfg.name}",
        "nodes": la.nodes,
        "ntasks_per_node": la.tasks_per_node,
        "cpus_per_task": la.cpus_per_task,
        "time": la.timeout_min,
        "signal_delay_s": la.signal_delay_s,
    }
    if la.gpus_per_node:
        params["gpus_per_node"] = la.gpus_per_node
    if la.mem_gb is not None:
        params["mem"] = f"{la.mem_gb}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(la, key) is not None:
            params[key] = getattr(la, key)
    if la.setup:
        params["setup"] = list(la.setup)
    if la.slurm_extra:
        params["additional_parameters"] = dict(la.slurm_extra)
    executor.update_parameters(**params)
    return executor


def submit(
    kind: str,
    cfg: RunConfig,
    *,
    only: str | None = None,
    redo: tuple[str, ...] | list[str] = (),
    wait_lock: bool = True,
) -> Any:
    """Submit ``cfg``'s pipeline as one job; records the job id and its log files in
    ``<run>/launcher/jobs.jsonl`` and returns the submitit job."""
    from clusterfit.stages.context import REDO_NAMES

    bad = sorted(set(redo) - set(REDO_NAMES))
    if bad:
        raise ConfigError(f"--redo {bad[0]}: not a stage; choose from {', '.join(REDO_NAMES)}")
    la = cfg.launcher
    if kind == "slurm" and la.gpus_per_node and la.tasks_per_node != la.gpus_per_node:
        print(
            f"clusterfit: note: launcher.tasks_per_node={la.tasks_per_node} with "
            f"gpus_per_node={la.gpus_per_node}; one task per GPU is the usual choice",
            file=sys.stderr,
        )
    executor = make_executor(kind, cfg)
    job = executor.submit(
        PipelineJob(cfg, only=only, redo=tuple(redo), launcher=kind, wait=wait_lock)
    )
    record(
        cfg,
        "submitted",
        job_id=str(job.job_id),
        launcher=kind,
        nodes=la.nodes,
        tasks_per_node=la.tasks_per_node,
        gpus_per_node=la.gpus_per_node,
        stdout=str(job.paths.stdout),
        stderr=str(job.paths.stderr),
        folder=str(Path(job.paths.folder)),
    )
    return job


def launch(
    kind: str,
    cfg: RunConfig,
    *,
    only: str | None = None,
    redo: tuple[str, ...] | list[str] = (),
    wait_lock: bool = True,
) -> int:
    """``clusterfit run --launcher kind``: submit, say where the job's logs are, and (local, or
    ``launcher.wait=true``) wait for it, printing its output; returns the exit status."""
    job = submit(kind, cfg, only=only, redo=redo, wait_lock=wait_lock)
    print(f"{kind} job {job.job_id}: {cfg.run_dir}\n  logs: {job.paths.stdout}", flush=True)
    wait = cfg.launcher.wait if cfg.launcher.wait is not None else kind == "local"
    if not wait:
        print(f"  job ids and log files: {cfg.run_dir / 'launcher' / 'jobs.jsonl'}")
        return 0
    try:
        job.results()  # one result per task
    except Exception as exc:  # submitit's FailedJobError / UncompletedJobError
        tail = _last_error(job) or str(exc).strip().splitlines()[-1]
        raise ClusterFitError(
            f"{kind} job {job.job_id} failed: {tail} (log: {job.paths.stderr})"
        ) from None
    out = job.stdout() or ""
    print(out.rstrip())
    return 0


def _last_error(job: Any) -> str:
    """The last ``clusterfit`` error (or exception) line of a failed job's stderr."""
    try:
        text = job.stderr() or ""
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln and not ln.startswith(("File ", "raise ", "submitit ")):
            return ln
    return ""


__all__ = ["LAUNCHERS", "launch", "make_executor", "submit"]
