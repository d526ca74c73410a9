"""SIGKILL at a random point of each stage, then a rerun: the same artifacts as a run never
interrupted, and never a finished run with other results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clusterfit.faults import STAGE_FOLDERS, artifact_digests, inject, run_to_end

TINY = [
    "data.limit=96",
    "pretrain.train.epochs=2",
    "pretrain.train.batch_size=32",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=6",
    "cluster.n_iter=5",
    "probe.layers=[res5]",
    "probe.targets.0.limit=64",
    "probe.targets.0.test_limit=48",
    "probe.n_updates=30",
    "probe.lrs=[0.01]",
    "probe.knn=false",
    "progress=false",
]


@pytest.mark.slow
def test_kill_each_stage_then_rerun(tmp_path: Path) -> None:
    env = {**os.environ, "CLUSTERFIT_CACHE": str(tmp_path / "cache")}
    ref_args = ["run", *TINY, f"out_dir={tmp_path / 'ref'}"]
    assert run_to_end(ref_args, env) == 0
    reference = artifact_digests(tmp_path / "ref" / "demo")
    assert {k.split("/")[0] for k in reference} == set(STAGE_FOLDERS)

    args = ["run", *TINY, f"out_dir={tmp_path / 'runs'}"]
    plan = [
        (stage, delay)
        for stage, delay in zip(STAGE_FOLDERS, (1.5, 0.3, 0.0, 1.0, 0.5), strict=True)
    ]
    report = inject(args, tmp_path / "runs" / "demo", reference, plan, env)
    assert report.kills >= 3, report.trials  # most kills land inside their stage
    assert report.survived == len(plan), report.trials
    assert report.identical == len(plan), report.trials
    assert report.wrong_results_served == 0
