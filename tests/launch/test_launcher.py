"""The submitit launcher: the same job that SLURM runs, run here by submitit's LocalExecutor.

A ``--smoke`` recipe runs to completion as a 2-process gloo job (sharded float16 features read
back by k-means); a job preempted mid-run (submitit's preemption signal) checkpoints, is
requeued and resumes from the stage checkpoints to the artifacts of an uninterrupted run; the
SLURM submission carries the launcher settings.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

submitit = pytest.importorskip("submitit")

from clusterfit.cli import main  # noqa: E402
from clusterfit.config import load_config  # noqa: E402
from clusterfit.faults import artifact_digests  # noqa: E402
from clusterfit.launch import PipelineJob, make_executor, read_records, submit  # noqa: E402
from clusterfit.launch.job import remove_redo  # noqa: E402
from clusterfit.stages import run_pipeline  # noqa: E402

TINY = [
    "data.limit=64",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=4",
    "probe.layers=[res5]",
    "probe.targets.0.limit=64",
    "probe.targets.0.test_limit=32",
    "probe.n_updates=10",
    "probe.knn=false",
    "probe.random_baseline=false",
    "progress=false",
    "device=cpu",
]
STAGES = ("pretrain", "features", "clusters", "fit", "probe")


@pytest.fixture
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the local jobs inherit: one thread each, a private image cache."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_smoke_recipe_two_process_job(tmp_path: Path, job_env: None) -> None:
    out = tmp_path / "runs"
    two_ranks = ["launcher.tasks_per_node=2", "extract.sharded=true", "extract.dtype=float16"]
    rc = main(["run", "--launcher", "local", "--smoke", *TINY, f"out_dir={out}", *two_ranks])
    assert rc == 0
    run_dir = out / "demo-smoke"
    for stage in STAGES:
        assert (run_dir / stage / "meta.json").is_file(), stage
    events = read_records(run_dir)
    assert [e["event"] for e in events] == ["submitted", "started", "finished"]
    submitted, started = events[0], events[1]
    assert started["job_id"] == submitted["job_id"]
    assert started["world_size"] == 2 and started["tasks"] == 2
    logs = Path(submitted["folder"])
    assert {p.name for p in logs.glob("*_log.out")} == {
        f"{submitted['job_id']}_{task}_log.out" for task in (0, 1)
    }
    assert "done in" in Path(submitted["stdout"]).read_text()  # rank 0's output

    # each rank wrote its own float16 file of its rows; the manifest lists them in order
    from clusterfit.sharded import ShardedArray

    feats = ShardedArray.open(run_dir / "features" / "pool.manifest.json")
    assert [p.name for p in feats.paths] == ["pool.00000-of-00002.npy", "pool.00001-of-00002.npy"]
    assert feats.dtype == np.float16 and feats.shape[0] == 64 and list(feats.bounds) == [0, 32, 64]
    assert not (run_dir / "features" / "pool.npy").exists()
    from clusterfit.data import load_images, to_float
    from clusterfit.models import load_model

    net = load_model(run_dir / "pretrain" / "checkpoint.pt").eval()
    images = load_images("bundled", "train", limit=64, seed=0, progress=False)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.forward_features(to_float(images.images)))
    np.testing.assert_allclose(np.asarray(feats, dtype=np.float32), expected.numpy(), atol=2e-3)
    # k-means read the shards (no pool.npy): its assignments are the nearest centroids
    x = np.asarray(feats, dtype=np.float32)
    centroids = np.load(run_dir / "clusters" / "centroids.npy")
    assignments = np.load(run_dir / "clusters" / "assignments.npy")
    d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignments, d.argmin(1))
    # the run's report reads the shards too: each shown cluster's nearest members, nearest first
    from clusterfit.report.clusters import load_clustering, load_run_data
    from clusterfit.report.runinfo import load_run

    info = load_run(run_dir)
    clustering = load_clustering(info, "clusters", load_run_data(info)[0])
    shown = [v for v in clustering.views if v.size]
    assert shown and all(v.nearest for v in shown)
    for v in shown:
        dist = d[v.nearest, assignments[v.nearest]]
        assert (np.diff(dist) >= -1e-5).all()


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes(tmp_path: Path, job_env: None) -> None:
    args = [*TINY, "pretrain.train.epochs=4", "pretrain.train.batch_size=16"]
    ref_cfg = load_config(overrides=[*args, f"out_dir={tmp_path / 'ref'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job (OMP_NUM_THREADS=1): the same arithmetic
    try:
        run_pipeline(ref_cfg)
    finally:
        torch.set_num_threads(threads)
    reference = artifact_digests(ref_cfg.run_dir)

    cfg = load_config(overrides=[*args, f"out_dir={tmp_path / 'runs'}"])
    job = submit("local", cfg)
    mark = cfg.run_dir / "pretrain" / ".fingerprint"
    deadline = time.monotonic() + 240
    while not mark.exists() and job.state == "RUNNING":
        assert time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.02)
    time.sleep(0.3)
    # what SLURM does before a preemption or the time limit: the warning signal to the task
    started = next(e for e in read_records(cfg.run_dir) if e["event"] == "started")
    os.kill(started["pid"], submitit.JobEnvironment._usr_sig())
    assert job.results() == [str(cfg.run_dir)]

    events = [(e["event"], e.get("attempt")) for e in read_records(cfg.run_dir)]
    assert events == [
        ("submitted", None),
        ("started", 1),
        ("requeued", 1),
        ("started", 2),
        ("finished", 2),
    ], events
    assert artifact_digests(cfg.run_dir) == reference
    log = (cfg.run_dir / "pretrain" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4  # every epoch once: the requeued job resumed, it did not start over


def test_checkpoint_requeues_the_same_run_without_redo(tmp_path: Path) -> None:
    cfg = load_config(overrides=[f"out_dir={tmp_path}"])
    job = PipelineJob(cfg, redo=("fit",), launcher="slurm")
    delayed = job.checkpoint()
    again = delayed.function
    assert isinstance(again, PipelineJob) and again.cfg == cfg
    assert again.redo == () and again.attempt == 2 and again.launcher == "slurm"
    assert read_records(cfg.run_dir)[-1]["event"] == "requeued"


def test_redo_removes_the_named_stages_once(tmp_path: Path) -> None:
    cfg = load_config(overrides=[f"out_dir={tmp_path}"])
    for name in ("pretrain", "features", "fit", "fit-k10", "probe"):
        (cfg.run_dir / name).mkdir(parents=True)
    assert remove_redo(cfg, ("fit",)) == ["fit", "fit-k10"]
    assert sorted(p.name for p in cfg.run_dir.iterdir() if p.is_dir()) == [
        "features",
        "pretrain",
        "probe",
    ]


def test_slurm_submission_carries_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"  # submitit checks that srun exists; the script is never run
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = load_config(
        overrides=[
            f"out_dir={tmp_path}",
            "launcher.nodes=4",
            "launcher.tasks_per_node=8",
            "launcher.gpus_per_node=8",
            "launcher.cpus_per_task=10",
            "launcher.mem_gb=480",
            "launcher.timeout_min=4320",
            "launcher.partition=learnfair",
            "launcher.account=vision",
            "launcher.signal_delay_s=300",
            "launcher.setup=[module load cuda/12.4]",
            "launcher.slurm_extra={exclusive: true}",
        ]
    )
    executor = make_executor("slurm", cfg)
    text = executor._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --mem=480GB",
        "#SBATCH --time=4320",
        "#SBATCH --partition=learnfair",
        "#SBATCH --account=vision",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --exclusive",
        "#SBATCH --job-name=clusterfit-demo",
        "module load cuda/12.4",
    ):
        assert line in text, (line, text)
    assert f"{cfg.run_dir / 'launcher'}/%j" in text  # logs under the run folder


def test_bad_launcher_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if shutil.which("srun") is None:
        assert main(["run", "--launcher", "slurm", f"out_dir={tmp_path}"]) == 2
        assert "no 'srun'" in capsys.readouterr().err
    rc = main(["run", "--launcher", "local", f"out_dir={tmp_path}", "launcher.nodes=2"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "launcher.nodes=2" in err and "slurm" in err
    rc = main(["run", "--launcher", "local", f"out_dir={tmp_path}", "--redo", "nonsense"])
    assert rc == 2 and "--redo nonsense" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "launcher").exists()  # nothing was submitted
