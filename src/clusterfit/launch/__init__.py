"""Launching a run on a cluster scheduler through submitit (``pip install 'clusterfit[slurm]'``).

``clusterfit run --launcher slurm`` submits the whole pipeline as one SLURM job (nodes, GPUs,
partition, time, memory from ``cfg.launcher``); ``--launcher local`` runs the same job through
submitit's local executor. See :mod:`clusterfit.launch.submit` and :mod:`clusterfit.launch.job`.
"""

from clusterfit.launch.job import JOBS_FILE, PipelineJob, read_records
from clusterfit.launch.submit import LAUNCHERS, launch, make_executor, submit

__all__ = [
    "JOBS_FILE",
    "LAUNCHERS",
    "PipelineJob",
    "launch",
    "make_executor",
    "read_records",
    "submit",
]
