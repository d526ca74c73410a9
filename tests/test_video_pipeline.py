"""Video ClusterFit end to end (paper §4.1.2) on small synthetic videos: the video recipe, a
weakly labelled N_pre, and what the stages record about the clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterfit.cli import main
from clusterfit.data.synthetic_video import write_video_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_video_folder(root / "train", per_class=6, frames=12, seed=0)
    write_video_folder(root / "test", per_class=3, frames=12, seed=1)
    return root


def _run(videos: Path, tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--config",
            str(ROOT / "configs" / "video.yaml"),
            "--smoke",
            f"data.source={videos}",
            "data.image_size=32",
            "data.crop_size=28",
            "data.video.clip_frames=4",
            "data.video.clips_per_video=2",
            "pretrain.arch_kwargs={width: 4, depth: 1}",
            "cluster.k=4",
            f"out_dir={tmp_path}",
            "progress=false",
            "probe.layers=[conv1,res5]",
            "probe.knn=false",
            *extra,
        ]
    )


def test_video_recipe_runs_and_records_the_clips(
    videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    assert _run(videos, tmp_path) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "N_cf" in out and "res5" in out
    run = tmp_path / "video-smoke"
    meta = json.loads((run / "features" / "meta.json").read_text())
    video = meta["summary"]["video"]
    assert video["videos"] == 12 and video["clips_per_video"] == 2 and video["n_looped"] == 0
    results = json.loads((run / "probe" / "results.json").read_text())["records"]
    assert {r["model"] for r in results} == {"random", "N_pre", "N_cf"}
    assert {r["layer"] for r in results} == {"conv1", "res5"}


def test_weakly_labelled_video_n_pre(
    videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    tags = tmp_path / "tags.csv"
    # several tags per video for a third of them: its class and the other one
    lines = [f"{i},{i // 6}" + (f";{1 - i // 6}" if i % 3 == 0 else "") for i in range(12)]
    tags.write_text("\n".join(lines) + "\n")
    code = _run(
        videos, tmp_path, "pretrain.objective=weak", f"pretrain.weak_labels={tags}", "name=weak"
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "weak-smoke" / "fit" / "meta.json").is_file()


def test_image_network_on_videos_is_one_clear_line(
    videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    code = _run(videos, tmp_path, "pretrain.arch=resnet_cifar", "pretrain.arch_kwargs={}")
    err = capsys.readouterr().err
    assert code != 0 and "video" in err and len(err.strip().splitlines()) == 1
