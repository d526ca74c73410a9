"""scripts/gpu_check.sh parses, and its figures' code runs at toy sizes on any device."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert result["tiny"] and result["finished"]
    train = result["train"]
    for key in ("fp32_contiguous", "fp32_channels_last", "bf16_contiguous", "bf16_channels_last"):
        assert train[key]["images_per_s"] > 0, key
    assert train["fp32_contiguous"]["vs_fp32_contiguous"] == 1.0
    km = result["kmeans"]
    assert (km["n"], km["d"], km["k"]) == (3000, 32, 16)
    assert math.isfinite(km["torch"]["objective"]) and km["torch"]["iteration_s"] >= 0
    assert km["faiss_cpu"]["iteration_s"] >= 0  # faiss-cpu is a dependency
    if not torch.cuda.is_available():  # the full run refuses, in one line, without a GPU
        full = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
        assert full.returncode != 0 and "no CUDA device" in full.stderr
        assert not (tmp_path / "gpu_check.json").exists()
