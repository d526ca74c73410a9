"""A real 2-process (gloo) k-means run equals the 1-process run on the same data and seed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

import clusterfit

sys.path.insert(0, str(Path(__file__).parent))
from kmeans_dist_worker import CONFIGS, fit_all

WORKER = Path(__file__).with_name("kmeans_dist_worker.py")
K = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_gloo_run_equals_single_process(tmp_path):
    X, _ = make_blobs(1501, n_features=8, centers=K, cluster_std=1.5, random_state=0)
    path = tmp_path / "x.npy"
    np.save(path, X.astype(np.float32))
    src = str(Path(clusterfit.__file__).parents[1])
    env_base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    procs = []
    for rank in range(2):
        env = {**env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        out = tmp_path / f"rank{rank}.npz"
        cmd = [sys.executable, str(WORKER), str(path), str(out), str(K)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    for p in procs:
        try:
            log, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed k-means workers timed out")
        assert p.returncode == 0, log

    single = fit_all(np.load(path, mmap_mode="r"), K)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert int(got["world_size"]) == 2
        for name in CONFIGS:
            np.testing.assert_array_equal(got[f"{name}_labels"], single[f"{name}_labels"])
            np.testing.assert_allclose(
                got[f"{name}_centers"], single[f"{name}_centers"], atol=1e-5, rtol=1e-5
            )
            np.testing.assert_allclose(
                got[f"{name}_objectives"], single[f"{name}_objectives"], rtol=1e-6
            )
            assert int(got[f"{name}_reseeded"]) == int(single[f"{name}_reseeded"])
    assert int(single["reseed_reseeded"]) >= 1
