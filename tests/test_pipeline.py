"""End to end on a tiny subset of the bundled data: the whole pipeline, no-op reruns, partial
reruns after a config change, resume after an interruption, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clusterfit.cli import main
from clusterfit.config import load_config
from clusterfit.evaluate.linear import resolve_precision
from clusterfit.stages import run_pipeline
from clusterfit.train import engine

TINY = [
    "data.limit=160",
    "pretrain.train.epochs=2",
    "pretrain.train.batch_size=32",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=8",
    "cluster.n_iter=5",
    "probe.layers=[res4,res5]",
    "probe.targets.0.limit=120",
    "probe.targets.0.test_limit=60",
    "probe.n_updates=40",
    "probe.lrs=[0.01]",
    "progress=false",
]
STAGE_DIRS = ["pretrain", "features", "clusters", "fit", "probe"]


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [*TINY, f"out_dir={tmp_path}", *extra]


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every data file of every stage (meta.json, which holds timings, excluded)."""
    out = {}
    for stage in STAGE_DIRS:
        for path in sorted((run_dir / stage).rglob("*")):
            if path.is_file() and path.name != "meta.json" and "tb" not in path.parts:
                out[str(path.relative_to(run_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_run_rerun_and_partial_rerun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "N_pre" in out and "N_cf" in out and "res5" in out
    run_dir = tmp_path / "demo"
    for stage in STAGE_DIRS:
        assert (run_dir / stage / "meta.json").is_file(), stage
    assert (run_dir / "report" / "index.html").is_file()
    assignments = np.load(run_dir / "clusters" / "assignments.npy")
    assert assignments.shape == (160,) and assignments.max() < 8
    feats = np.load(run_dir / "features" / "pool.npy")
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    results = json.loads((run_dir / "probe" / "results.json").read_text())
    models = {r["model"] for r in results["records"]}
    assert models == {"random", "N_pre", "N_cf"}
    metas = {s: (run_dir / s / "meta.json").read_text() for s in STAGE_DIRS}

    assert main(["run", *tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date, skipped") == len(STAGE_DIRS)
    assert {s: (run_dir / s / "meta.json").read_text() for s in STAGE_DIRS} == metas
    linear = [r for r in results["records"] if r["protocol"] == "linear"]
    auto = resolve_precision("auto", "cpu")  # bfloat16 where this CPU multiplies it natively
    assert {r["extra"]["precision"] for r in linear} == {auto}

    # The probes' precision keys their cells: switching it reprobes, and nothing else.
    other = "float32" if auto == "bfloat16" else "bfloat16"
    assert main(["run", *tiny(tmp_path, f"probe.precision={other}")]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date, skipped") == len(STAGE_DIRS) - 1
    assert "probe: up to date" not in out
    records = json.loads((run_dir / "probe" / "results.json").read_text())["records"]
    assert {r["extra"]["precision"] for r in records if r["protocol"] == "linear"} == {other}

    assert main(["run", *tiny(tmp_path, "cluster.k=6")]) == 0
    out = capsys.readouterr().out
    for stage in ("pretrain", "features"):
        assert f"{stage}: up to date" in out
    for stage in ("clusters", "fit", "probe"):
        assert f"{stage}: up to date" not in out
    assert (run_dir / "pretrain" / "meta.json").read_text() == metas["pretrain"]
    assert np.load(run_dir / "clusters" / "assignments.npy").max() < 6


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    run_pipeline(load_config(overrides=tiny(straight, "pretrain.train.epochs=3")), only="pretrain")

    interrupted = tmp_path / "interrupted"
    cfg = load_config(overrides=tiny(interrupted, "pretrain.train.epochs=3"))
    real_epoch = engine.Trainer._epoch

    def dying_epoch(self: engine.Trainer, model, optimizer, epoch, steps, bar):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, model, optimizer, epoch, steps, bar)

    monkeypatch.setattr(engine.Trainer, "_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, only="pretrain")
    stage_dir = interrupted / "demo" / "pretrain"
    assert not (stage_dir / "meta.json").exists()
    assert torch.load(stage_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(engine.Trainer, "_epoch", real_epoch)
    run_pipeline(cfg, only="pretrain")

    a = weights(straight / "demo" / "pretrain" / "checkpoint.pt")
    b = weights(stage_dir / "checkpoint.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (stage_dir / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]


@pytest.mark.slow
def test_bad_input_is_one_clear_line_and_damages_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", *tiny(tmp_path)]) == 0
    run_dir = tmp_path / "demo"
    before = digest(run_dir)
    capsys.readouterr()

    cases = {
        "cluster.k=100000": "cluster.k",
        "data.source=/no/such/folder": "/no/such/folder",
        "pretrain.arch=resnet_nope": "resnet_nope",
        "extract.layer=res9": "res9",
        "cluster.kk=3": "cluster.kk",
    }
    for override, culprit in cases.items():
        assert main(["run", *tiny(tmp_path, override)]) == 2, override
        err = capsys.readouterr().err
        assert culprit in err, (override, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert digest(run_dir) == before


def test_stage_before_its_inputs_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["cluster", *tiny(tmp_path)]) == 2
    assert "clusterfit extract" in capsys.readouterr().err


def _write_multilabel_target(folder: Path) -> Path:
    """A VOC07-style target from bundled images: labels 'top' (classes 0-4) and 'even' (even
    classes), so items carry zero, one or two of them; a split column."""
    from PIL import Image

    from clusterfit.data import load_images

    rows = ["path,labels,split"]
    for split, limit in (("train", 80), ("test", 40)):
        images = load_images("bundled", split, limit=limit, progress=False)
        for i, (img, y) in enumerate(zip(images.images, images.labels, strict=True)):
            name = f"{split}-{i}.png"
            Image.fromarray(img[0].numpy()).save(folder / name)
            tags = [t for t, on in (("top", y < 5), ("even", y % 2 == 0)) if on]
            rows.append(f"{name},{';'.join(tags)},{split}")
    path = folder / "targets.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_multilabel_svm_and_lowshot_probes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv_path = _write_multilabel_target(tmp_path)
    target = (
        f"probe.targets=[{{name: tags, source: {csv_path}, multilabel: true}},"
        "{name: fm, source: bundled, limit: 100, test_limit: 50}]"
    )
    args = [*tiny(tmp_path), target, "probe.lowshot_shots=[1,4]", "probe.lowshot_draws=2"]
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "SVM mAP (%) on tags" in out and "4-shot res5" in out
    records = json.loads((tmp_path / "demo" / "probe" / "results.json").read_text())["records"]
    svm = [r for r in records if r["target"] == "tags"]
    assert {r["protocol"] for r in svm} == {"svm"} and all(0 <= r["value"] <= 100 for r in svm)
    low = [r for r in records if r["protocol"] == "lowshot"]
    assert sorted({r["shots"] for r in low}) == [1, 4]
    assert {r["model"] for r in low} == {"random", "N_pre", "N_cf"}


class TinyBackbone(torch.nn.Module):
    """A user's own network: images -> a feature map (B x 16 x H/2 x W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


@pytest.mark.slow
def test_any_nn_module_as_n_pre(tmp_path: Path) -> None:
    from clusterfit.models import from_module

    torch.manual_seed(0)
    user_net = from_module(TinyBackbone(), {"res4": "stem", "res5": "body"}, in_chans=1)
    cfg = load_config(overrides=tiny(tmp_path))
    metas = run_pipeline(cfg, n_pre=user_net, module_factory=TinyBackbone)
    assert metas["pretrain"]["summary"] == {"objective": "module", "trained": False}
    run_dir = tmp_path / "demo"
    feats = np.load(run_dir / "features" / "pool.npy")
    assert feats.shape == (160, 16)
    from clusterfit.models import load_model

    ncf = load_model(run_dir / "fit" / "checkpoint.pt", module_factory=TinyBackbone)
    assert ncf.head_sizes == [8] and ncf.feature_dim == 16
    records = json.loads((run_dir / "probe" / "results.json").read_text())["records"]
    assert {r["model"] for r in records} == {"random", "N_pre", "N_cf"}
    # the same module again is up to date; other weights are another N_pre
    again = run_pipeline(cfg, n_pre=user_net, module_factory=TinyBackbone)
    assert again["pretrain"]["fingerprint"] == metas["pretrain"]["fingerprint"]
    torch.manual_seed(1)
    other = from_module(TinyBackbone(), {"res4": "stem", "res5": "body"}, in_chans=1)
    changed = run_pipeline(cfg, only="pretrain", n_pre=other, module_factory=TinyBackbone)
    assert changed["pretrain"]["fingerprint"] != metas["pretrain"]["fingerprint"]
