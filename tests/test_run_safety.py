"""No stale result, no mixed run folder, every environmental failure one line: each hole found in
the run graph has its regression test here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clusterfit.artifacts import RunLock, Stage, file_mode, read_json
from clusterfit.cli import main
from clusterfit.config import load_config
from clusterfit.errors import ClusterFitError, StorageError
from clusterfit.stages import pretrain
from clusterfit.stages.context import Context

TINY = [
    "data.limit=96",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=32",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=6",
    "cluster.n_iter=3",
    "probe.layers=[res5]",
    "probe.n_updates=30",
    "probe.lrs=[0.01]",
    "probe.knn=false",
    "probe.random_baseline=false",
    "progress=false",
]


def make_target(root: Path, n: int = 8) -> Path:
    """A 3-class image folder with train/ and test/: class c is a bright square at place c."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b", "c")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (28, 28), dtype=np.uint8)
                img[4 + 7 * c : 11 + 7 * c, 4 + 7 * c : 11 + 7 * c] = 250
                Image.fromarray(img).save(folder / f"{name}{i}.png")
    return root


def linear_top1(run: Path) -> dict[str, float]:
    records = read_json(run / "probe" / "results.json")["records"]
    return {
        r["model"]: r["value"]
        for r in records
        if r["protocol"] == "linear" and r["metric"] == "top1"
    }


@pytest.mark.slow
def test_probe_follows_the_content_of_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Hole 1: swapping two class folders of a target's test split was served from the old
    probe (and, with probe/ deleted, from the old cells)."""
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    target = make_target(tmp_path / "target")
    args = [*TINY, f"out_dir={tmp_path}", "probe.targets.0.name=squares"]
    args += [f"probe.targets.0.source={target}"]
    assert main(["run", *args]) == 0
    before = linear_top1(tmp_path / "demo")
    test = target / "test"
    (test / "a").rename(test / "tmp")
    (test / "b").rename(test / "a")
    (test / "tmp").rename(test / "b")
    capsys.readouterr()
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "probe: up to date" not in out and "fit: up to date" in out
    after = linear_top1(tmp_path / "demo")
    assert after != before
    # the cells of the old content are not served for the new one, with probe/ gone too
    shutil.rmtree(tmp_path / "demo" / "probe")
    assert main(["run", *args]) == 0
    assert linear_top1(tmp_path / "demo") == after


def test_weak_labels_file_content_keys_n_pre(tmp_path: Path) -> None:
    labels = tmp_path / "weak.json"
    labels.write_text(json.dumps({"0": [1]}))
    cfg = load_config(
        overrides=["pretrain.objective=weak", f"pretrain.weak_labels={labels}", "data.limit=20"]
    )
    first = pretrain.stage(Context.create(cfg)).fingerprint
    labels.write_text(json.dumps({"0": [2]}))
    os.utime(labels, ns=(1, 1))  # a new mtime, as an edit gives
    assert pretrain.stage(Context.create(cfg)).fingerprint != first


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from clusterfit.artifacts import RunLock
    with RunLock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_a_second_process_waits_or_refuses(tmp_path: Path) -> None:
    """Hole 2: two runs into one folder at once mixed their stages."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run), "1.5"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    busy = pytest.raises(ClusterFitError, match=r"in use by another clusterfit process \(pid ")
    with busy, RunLock(run, wait=False):
        pass
    said: list[str] = []
    started = time.perf_counter()
    with RunLock(run, wait=True, say=said.append):
        waited = time.perf_counter() - started
    holder.wait(timeout=10)
    assert said and "waiting for another clusterfit process" in said[0]
    assert waited > 0.5


@pytest.mark.slow
def test_run_facts_come_from_the_artifacts(tmp_path: Path) -> None:
    """Hole 3: re-clustering with another K, then probing, recorded N_cf under the new K."""
    args = [*TINY, f"out_dir={tmp_path}"]
    assert main(["run", *args]) == 0
    assert main(["cluster", *args, "cluster.k=4"]) == 0
    assert main(["probe", *args, "--redo", "probe"]) == 0
    records = read_json(tmp_path / "demo" / "probe" / "results.json")["records"]
    assert {r["k"] for r in records if r["model"] == "N_cf"} == {6}
    ckpt = torch.load(tmp_path / "demo" / "fit" / "checkpoint.pt", weights_only=True)
    assert ckpt["k"] == [6] and len(ckpt["clusters"]) == 1


@pytest.mark.slow
def test_missing_artifact_is_one_line_and_redo_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Hole 5: an artifact deleted under its meta.json gave a FileNotFoundError traceback."""
    args = [*TINY, f"out_dir={tmp_path}"]
    assert main(["run", *args]) == 0
    ckpt = tmp_path / "demo" / "fit" / "checkpoint.pt"
    original = torch.load(ckpt, weights_only=True)["state_dict"]
    ckpt.unlink()
    capsys.readouterr()
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.pt is missing" in err and "--redo fit" in err
    assert main(["run", *args, "--redo", "fit"]) == 0
    again = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in original.items())  # deterministic training


def test_unwritable_out_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Hole 5: a read-only out_dir gave a traceback. (As root, permissions do not stop writes,
    so the out_dir here lies below a plain file: it can never be made.)"""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", *TINY, f"out_dir={blocker / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from clusterfit.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_full_disk_is_one_line(tmp_path: Path) -> None:
    """Hole 5: a full disk showed torch's 'unexpected pos ...' instead of the cause."""
    env = {**os.environ, "CLUSTERFIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "60000", "run", *TINY, f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "could not write" in err[0] and "limit" in err[0], err


@pytest.mark.slow
def test_unreadable_resume_state_is_discarded(tmp_path: Path) -> None:
    """Hole 6: an empty .rows_done or a truncated features .npy jammed every rerun."""
    args = [*TINY, f"out_dir={tmp_path}"]
    assert main(["pretrain", *args]) == 0
    assert main(["extract", *args]) == 0
    feats = tmp_path / "demo" / "features"
    good = np.load(feats / "pool.npy")
    (feats / "meta.json").unlink()  # as if killed before finishing
    (feats / ".rows_done.rank0").write_text("")
    with open(feats / "pool.npy", "r+b") as f:
        f.truncate(40)
    with pytest.warns(UserWarning, match="cannot be read|unreadable"):
        assert main(["extract", *args]) == 0
    assert np.array_equal(np.load(feats / "pool.npy"), good)


@pytest.mark.slow
def test_files_get_the_umask_mode(tmp_path: Path) -> None:
    """Hole 7: atomically written files were 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o644
        assert main(["pretrain", *TINY, f"out_dir={tmp_path}"]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "demo").rglob("*") if p.is_file()]
    assert files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_damaged_stage_names_the_file_and_the_fix(tmp_path: Path) -> None:
    st = Stage(tmp_path, "fit", {"a": 1}, {})
    st.begin()
    (st.dir / "weights.bin").write_bytes(b"1234")
    st.finish({})
    assert Stage(tmp_path, "fit", {"a": 1}, {}).is_complete()
    (st.dir / "weights.bin").write_bytes(b"12")
    with pytest.raises(StorageError, match=r"weights\.bin changed size.*--redo fit"):
        Stage(tmp_path, "fit", {"a": 1}, {}).is_complete()


def test_report_averages_only_true_seeds(tmp_path: Path) -> None:
    """Hole 8: a 256-image smoke run and a 1,020-image run of the same seed were averaged as two
    seeds, and the combined report overwrote the first run's own report."""
    from clusterfit.report.tables import aggregate, table_rows
    from clusterfit.stages import probe, report

    def digest(*overrides: str) -> str:
        cfg = load_config(overrides=["data.limit=64", *overrides])
        ctx = Context.create(cfg)
        ncf = next(m for m in probe.probed(ctx) if m.kind == "fit")
        return probe.settings_digest(ctx, ncf)

    same = digest("seed=0", "name=a")
    assert digest("seed=1", "name=b", "out_dir=elsewhere") == same
    assert digest("data.limit=32") != same  # other data size
    assert digest("fit.train.epochs=3") != same  # another recipe
    assert digest("cluster.k=9") == same  # K is a record field of its own

    base = {"model": "N_cf", "layer": "res5", "target": "t", "protocol": "linear"}
    base |= {"metric": "top1", "objective": "supervised", "k": 8}
    recs = [
        {**base, "value": 40.0, "seed": 0, "settings": "small"},
        {**base, "value": 60.0, "seed": 0, "settings": "large"},
        {**base, "value": 62.0, "seed": 1, "settings": "large"},
    ]
    aggs = aggregate(recs)
    assert sorted((a.key["settings"], a.n) for a in aggs) == [("large", 2), ("small", 1)]
    header, rows = table_rows(recs)
    assert "settings" in header and len(rows) == 2
    header, rows = table_rows(recs[1:])  # one setting: no settings column
    assert "settings" not in header and rows[0][-1] == "61.00 ± 1.41"

    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    assert report.default_folder(runs[:1]) == runs[0] / "report"
    assert report.default_folder(runs) == tmp_path / "runs" / "report-a+b"
