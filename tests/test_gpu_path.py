"""The GPU path (skipped without CUDA; ``scripts/gpu_check.sh`` runs it on a GPU machine):
bf16 autocast + channels-last training, fp16 / bf16 extraction, the pipeline on a GPU with
sharded float16 features clustered by the torch backend, faiss-gpu when installed, and a
2-process NCCL run when two GPUs are present."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clusterfit.cluster import KMeans
from clusterfit.config import TrainConfig, load_config
from clusterfit.data import load_images
from clusterfit.features import compute_features
from clusterfit.models import create_model
from clusterfit.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = [
    "data.limit=128",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=32",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=4",
    "cluster.n_iter=3",
    "probe.layers=[res5]",
    "probe.targets.0.limit=64",
    "probe.targets.0.test_limit=32",
    "probe.n_updates=10",
    "probe.lrs=[0.01]",
    "progress=false",
]


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    return load_images("bundled", "train", limit=128, seed=0, progress=False)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_cifar", [10], in_chans=1, width=8)


def test_bf16_channels_last_training(tmp_path: Path, images) -> None:
    logs = {}
    for amp in (False, True):
        net = _net()
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, amp=amp, channels_last=True)
        trainer = Trainer(
            net, images, [images.labels], cfg, tmp_path / f"amp{amp}", device="cuda",
            progress=False,
        )  # fmt: skip
        logs[amp] = trainer.fit()
        conv = next(p for p in net.parameters() if p.ndim == 4)
        assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    bf16, fp32 = logs[True], logs[False]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in bf16)
    assert bf16[0]["loss"] != fp32[0]["loss"]  # autocast was on
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.05)


@pytest.mark.parametrize("precision", [torch.float16, torch.bfloat16])
def test_low_precision_extraction(images, precision: torch.dtype) -> None:
    net = _net()
    kw = dict(normalize=True, batch_size=64, progress=False)
    ref = compute_features(net, images, ["pool"], device="cpu", **kw)["pool"]
    low = compute_features(net, images, ["pool"], device="cuda", precision=precision, **kw)
    assert low["pool"].dtype == np.float32
    assert (low["pool"] * ref).sum(1).min() > 0.99


def test_pipeline_on_gpu_with_sharded_float16_features(tmp_path: Path, monkeypatch) -> None:
    from clusterfit.sharded import ShardedArray
    from clusterfit.stages import run_pipeline

    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    extra = [
        "device=cuda",
        "extract.precision=bfloat16",
        "extract.dtype=float16",
        "extract.sharded=true",
        "cluster.backend=torch",
        f"out_dir={tmp_path}",
    ]
    cfg = load_config(overrides=[*TINY, *extra])
    run_pipeline(cfg)
    feats = ShardedArray.open(cfg.run_dir / "features" / "pool.manifest.json")
    assert feats.dtype == np.float16 and feats.shape[0] == 128
    stats = json.loads((cfg.run_dir / "clusters" / "stats.json").read_text())
    assert stats["backend"] == "torch"
    x = np.asarray(feats, dtype=np.float32)
    cpu = KMeans(4, n_iter=3, backend="torch", device="cpu", progress=False).fit(x)
    gpu = KMeans(4, n_iter=3, backend="torch", device="cuda", progress=False).fit(
        cfg.run_dir / "features" / "pool.manifest.json"
    )
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    assignments = np.load(cfg.run_dir / "clusters" / "assignments.npy")
    np.testing.assert_array_equal(assignments, gpu.labels_)


def test_faiss_gpu_backend() -> None:
    from clusterfit.cluster.assign import faiss_has_gpu, import_faiss

    faiss = import_faiss()
    if faiss is None or not faiss_has_gpu(faiss):
        pytest.skip("faiss-gpu is not installed")
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((5000, 32)) + 6 * rng.integers(0, 8, (5000, 1))).astype(np.float32)
    a = KMeans(8, n_iter=5, backend="faiss", device="cuda", progress=False).fit(X)
    b = KMeans(8, n_iter=5, backend="torch", device="cuda", progress=False).fit(X)
    assert a.backend_ == "faiss"
    assert (a.labels_ == b.labels_).mean() > 0.999


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs")
def test_two_process_nccl_run(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLUSTERFIT_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={port}", "-m", "clusterfit.cli", "run", *TINY, "device=auto",
        f"out_dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("pretrain", "features", "clusters", "fit", "probe"):
        assert (tmp_path / "demo" / stage / "meta.json").is_file(), stage
