"""Fault injection for the run graph: kill ``clusterfit run`` at random points, rerun, compare.

A run folder must survive ``kill -9`` at any point of any stage: the rerun resumes or redoes what
was cut off and ends with the same artifacts as a run never interrupted, and no rerun may
report a finished run whose results differ (a *wrong result served*). The tests
(``tests/test_faults.py``) and ``benchmarks/faults.py`` drive this module.

Artifacts are compared by content that does not depend on timing: arrays of ``.npy`` files,
tensors of checkpoints, and the probe records' values; ``meta.json``, logs and TensorBoard files
(which hold timings) are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Stage folders in pipeline order (single N_pre, no sweep, no baselines).
STAGE_FOLDERS = ("pretrain", "features", "clusters", "fit", "probe")


def _tensor_digest(h: Any, obj: Any) -> None:
    if torch.is_tensor(obj):
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if k in ("log", "train_config", "config"):  # timings, and settings already keyed
                continue
            h.update(str(k).encode())
            _tensor_digest(h, obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            _tensor_digest(h, v)
    else:
        h.update(repr(obj).encode())


def _untimed(obj: Any) -> Any:
    """A JSON value without its timings (keys that name seconds)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if "seconds" not in str(k)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def artifact_digests(run_dir: Path) -> dict[str, str]:
    """``{relative path: digest}`` of the timing-free content of every stage's artifacts."""
    out: dict[str, str] = {}
    for folder in STAGE_FOLDERS:
        for path in sorted((Path(run_dir) / folder).rglob("*")):
            rel = str(path.relative_to(run_dir))
            if not path.is_file() or path.name.startswith(".") or "tb" in path.parts:
                continue
            h = hashlib.sha256()
            if path.suffix == ".npy":
                h.update(np.ascontiguousarray(np.load(path)).tobytes())
            elif path.suffix == ".pt":
                _tensor_digest(h, torch.load(path, map_location="cpu", weights_only=True))
            elif path.name == "results.json":
                records = json.loads(path.read_text())["records"]
                h.update(
                    json.dumps([(r["model"], r["layer"], r["value"]) for r in records]).encode()
                )
            elif path.name in ("meta.json", "log.jsonl"):
                continue
            elif path.suffix == ".json":
                h.update(json.dumps(_untimed(json.loads(path.read_text()))).encode())
            else:
                h.update(path.read_bytes())
            out[rel] = h.hexdigest()
    return out


def run_command(args: list[str]) -> list[str]:
    """The command line of ``clusterfit <args>`` in this Python."""
    return [sys.executable, "-m", "clusterfit.cli", *args]


def run_to_end(args: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> int:
    """Run ``clusterfit <args>`` to its end; returns the exit status."""
    proc = subprocess.run(
        run_command(args), env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode


def kill_during(
    args: list[str],
    run_dir: Path,
    folder: str,
    delay: float,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> bool:
    """Start ``clusterfit <args>``, and ``delay`` seconds after stage ``folder`` has begun (its
    folder holds a ``.fingerprint``), SIGKILL it. Returns True when the kill landed (False when
    the run ended first)."""
    proc = subprocess.Popen(
        run_command(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    mark = Path(run_dir) / folder / ".fingerprint"
    started = time.monotonic()
    try:
        while proc.poll() is None and not mark.exists():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"stage {folder} did not begin within {timeout} s")
            time.sleep(0.02)
        if proc.poll() is not None:
            return False
        time.sleep(delay)
        if proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        return True
    finally:
        proc.wait()


@dataclass
class FaultReport:
    """What a series of kills did: how many landed, whether every rerun survived and ended with
    the reference artifacts, and how many finished runs served other results."""

    kills: int = 0
    survived: int = 0
    identical: int = 0
    wrong_results_served: int = 0
    trials: list[dict[str, Any]] = field(default_factory=list)


def inject(
    args: list[str],
    run_dir: Path,
    reference: dict[str, str],
    plan: list[tuple[str, float]],
    env: dict[str, str] | None = None,
) -> FaultReport:
    """For each (stage folder, delay) of ``plan``: remove that stage and the later ones, kill a
    run ``delay`` seconds into that stage, then rerun it to the end and compare its artifacts
    with ``reference`` (:func:`artifact_digests` of an uninterrupted run of the same ``args``).
    Earlier stages carry over from trial to trial, as they would for a user."""
    report = FaultReport()
    for folder, delay in plan:
        for later in [*STAGE_FOLDERS[STAGE_FOLDERS.index(folder) :], "probe_cells"]:
            shutil.rmtree(Path(run_dir) / later, ignore_errors=True)
        landed = kill_during(args, run_dir, folder, delay, env)
        rc = run_to_end(args, env)
        digests = artifact_digests(run_dir) if rc == 0 else {}
        same = digests == reference
        report.kills += int(landed)
        report.survived += int(rc == 0)
        report.identical += int(same)
        report.wrong_results_served += int(rc == 0 and not same)
        differing = sorted(k for k in reference if digests.get(k) != reference[k])
        report.trials.append(
            {"stage": folder, "delay": round(delay, 3), "killed": landed, "rc": rc,
             "identical": same, "differing": differing[:5]}
        )  # fmt: skip
    return report


def random_plan(n: int, seed: int = 0, max_delay: float = 2.0) -> list[tuple[str, float]]:
    """``n`` (stage, delay) pairs, stages cycling through the pipeline in random order."""
    rng = random.Random(seed)
    stages = [STAGE_FOLDERS[i % len(STAGE_FOLDERS)] for i in range(n)]
    rng.shuffle(stages)
    return [(s, rng.uniform(0.0, max_delay)) for s in stages]
