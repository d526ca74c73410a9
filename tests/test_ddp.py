"""A real two-process run (torchrun, gloo backend, CPU): DDP training, sharded extraction and
distributed k-means, ending with the same artifacts a one-process run would have written."""

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
    "device=cpu",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "clusterfit.cli",
        "run",
        *TINY,
        f"out_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "demo"
    for stage in ("pretrain", "features", "clusters", "fit", "probe"):
        assert (run_dir / stage / "meta.json").is_file(), stage
    log = [json.loads(x) for x in (run_dir / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert log[0]["images_per_s"] > 0 and np.isfinite(log[0]["loss"])
    # the extraction was split between the two ranks: every row was written, and matches N_pre
    feats = np.load(run_dir / "features" / "pool.npy")
    assert feats.shape[0] == 128
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    from clusterfit.data import load_images, to_float
    from clusterfit.models import load_model

    net = load_model(run_dir / "pretrain" / "checkpoint.pt").eval()
    images = load_images("bundled", "train", limit=128, seed=0, progress=False)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.forward_features(to_float(images.images)))
    np.testing.assert_allclose(feats, expected.numpy(), atol=1e-4)
    assignments = np.load(run_dir / "clusters" / "assignments.npy")
    centroids = np.load(run_dir / "clusters" / "centroids.npy")
    d = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignments, d.argmin(1))
