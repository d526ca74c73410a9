"""The job a launcher submits: the whole pipeline, in every process of a submitit job.

:class:`PipelineJob` is the callable that submitit pickles and runs once per task (``nodes`` x
``tasks_per_node`` processes). Each task sets up the ``torchrun`` environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from submitit's job environment,
joins the process group and runs :func:`clusterfit.stages.run_pipeline`; the stages themselves
split the work between ranks exactly as under ``torchrun``.

Preemption and time-outs: submitit calls :meth:`PipelineJob.checkpoint` on rank 0 when the
scheduler signals the job (SLURM's warning signal before the time limit, or a preemption); it
returns the same job to be requeued. The state lives on disk (each stage's checkpoint, resumable
extraction, ``meta.json`` of finished stages), so the requeued job skips what is done and resumes
the stage that was cut off, ending with the artifacts of an uninterrupted run.

Rank 0 appends one JSON line per event (``started``, ``redo``, ``requeued``, ``finished``,
``failed``) to ``<run>/launcher/jobs.jsonl``, with the job id, the host and the log files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clusterfit.config import RunConfig

#: The run-folder file that lists submissions and job events, one JSON object a line.
JOBS_FILE = "jobs.jsonl"


def launcher_dir(cfg: RunConfig) -> Path:
    """Where submitit's logs and pickles go: ``launcher.folder`` or ``<run>/launcher``."""
    return Path(cfg.launcher.folder) if cfg.launcher.folder else cfg.run_dir / "launcher"


def record(cfg: RunConfig, event: str, **facts: Any) -> None:
    """Append ``{"event": event, "time": ..., **facts}`` to ``<run>/launcher/jobs.jsonl``."""
    path = cfg.run_dir / "launcher" / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts}
    with open(path, "a") as f:  # one short write: lines of several events never interleave
        f.write(json.dumps(line) + "\n")


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The events of ``<run>/launcher/jobs.jsonl`` (empty when the run was never launched)."""
    path = Path(run_dir) / "launcher" / JOBS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def export_torch_env() -> None:
    """Set the ``torchrun`` variables from the submitit job environment (a no-op for a job of
    one task). One node: the master is this host's loopback; many: the job's first node, on a
    port drawn from the job id (the same on every task)."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    dist_env = submitit.helpers.TorchDistributedEnvironment()
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)
    if env.num_nodes == 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"


def run_and_report(
    cfg: RunConfig, only: str | None, wait: bool = True, redo: tuple[str, ...] = ()
) -> None:
    """The pipeline (or one stage; ``redo``: stages to make again), then on rank 0 the probe
    tables and the run's report: what ``clusterfit run`` does, in or out of a job."""
    from clusterfit import distributed
    from clusterfit.artifacts import read_json
    from clusterfit.stages import probe, probe_folders, report, run_pipeline

    started = time.perf_counter()
    run_pipeline(cfg, only=only, redo=redo, wait=wait)
    if not distributed.is_main_process():
        return
    if only in (None, "probe"):
        for folder in probe_folders(cfg):
            records = read_json(cfg.run_dir / folder / "results.json")["records"]
            print(f"\n[{folder}]")
            print(probe.format_table(records))
        if only is None:
            report.run([cfg.run_dir], cfg.run_dir / "report")
            print(f"\nreport: {cfg.run_dir / 'report' / 'index.html'}")
    print(f"done in {time.perf_counter() - started:.1f} s: {cfg.run_dir}", flush=True)


def remove_redo(cfg: RunConfig, redo: tuple[str, ...], wait: bool = True) -> list[str]:
    """Delete the folders of the stages named by ``--redo`` (under the run lock); returns them.

    Done once, when the job first starts, rather than when the pipeline reaches each stage: a
    job requeued after a preemption must resume the stages it redoes, not delete them again.
    """
    from clusterfit.artifacts import RunLock
    from clusterfit.errors import ConfigError
    from clusterfit.stages.context import REDO_NAMES, redo_matches

    bad = sorted(set(redo) - set(REDO_NAMES))
    if bad:
        raise ConfigError(f"--redo {bad[0]}: not a stage; choose from {', '.join(REDO_NAMES)}")
    removed: list[str] = []
    if not redo or not cfg.run_dir.is_dir():
        return removed
    with RunLock(cfg.run_dir, wait=wait):
        for path in sorted(cfg.run_dir.iterdir()):
            if path.is_dir() and redo_matches(frozenset(redo), path.name):
                shutil.rmtree(path)
                removed.append(path.name)
    return removed


@dataclass
class PipelineJob:
    """The submitted callable: ``cfg``'s pipeline (``only`` one stage, when set) in each task.

    ``redo``: stages to delete and make again, before anything runs (first start only).
    ``launcher``: ``local`` or ``slurm``, recorded with the job's events.
    """

    cfg: RunConfig
    only: str | None = None
    redo: tuple[str, ...] = ()
    launcher: str = "local"
    wait: bool = True
    attempt: int = 1

    def __call__(self) -> str:
        """Run the pipeline in this task; returns the run folder."""
        import submitit

        from clusterfit import distributed

        export_torch_env()
        distributed.init_from_env()
        env = submitit.JobEnvironment()
        main = distributed.is_main_process()
        if main:
            record(
                self.cfg,
                "started",
                job_id=env.job_id,
                attempt=self.attempt,
                launcher=self.launcher,
                host=socket.gethostname(),
                pid=os.getpid(),
                nodes=env.num_nodes,
                tasks=env.num_tasks,
                world_size=distributed.get_world_size(),
                stdout=str(env.paths.stdout),
                stderr=str(env.paths.stderr),
            )
        try:
            # once per job: a job that SLURM itself requeues (preemption) starts again from the
            # pickle it was submitted with, --redo included
            if main and self.redo and not _redo_done(self.cfg, env.job_id):
                removed = remove_redo(self.cfg, self.redo, self.wait)
                record(self.cfg, "redo", job_id=env.job_id, stages=list(self.redo), removed=removed)
            distributed.barrier()
            run_and_report(self.cfg, self.only, self.wait)
        except Exception as exc:
            if main:
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                record(self.cfg, "failed", job_id=env.job_id, attempt=self.attempt, error=last)
            raise
        if main:
            record(self.cfg, "finished", job_id=env.job_id, attempt=self.attempt)
        return str(self.cfg.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on rank 0 when the job is preempted or about to time out: the job
        to requeue, which resumes from the stage checkpoints on disk (``--redo`` was done)."""
        import submitit

        record(self.cfg, "requeued", job_id=_job_id(), attempt=self.attempt)
        again = replace(self, redo=(), attempt=self.attempt + 1)
        return submitit.helpers.DelayedSubmission(again)


def _job_id() -> str | None:
    """The submitit job id of this process, or None outside a job."""
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except (KeyError, RuntimeError):
        return None


def _redo_done(cfg: RunConfig, job_id: str) -> bool:
    """True when job ``job_id`` already removed its ``--redo`` stages (an earlier attempt)."""
    return any(
        e.get("event") == "redo" and e.get("job_id") == job_id for e in read_records(cfg.run_dir)
    )
