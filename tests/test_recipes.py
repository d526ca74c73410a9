"""Every recipe in configs/ runs end to end with --smoke on the bundled data (the video recipe
on small synthetic videos)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterfit.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_smoke(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = []
    if recipe.stem == "video":  # a folder of videos, not the bundled images: small synthetic ones
        from clusterfit.data.synthetic_video import write_video_folder

        data = tmp_path.parent / f"{tmp_path.name}-videos"
        write_video_folder(data / "train", per_class=8, frames=12)
        write_video_folder(data / "test", per_class=2, frames=12, seed=1)
        extra = [f"data.source={data}", "data.image_size=32", "data.crop_size=28"]
    code = main(
        [
            "run",
            "--config",
            str(recipe),
            "--smoke",
            f"out_dir={tmp_path}",
            "progress=false",
            "probe.layers=[res4,res5]",
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "N_cf" in captured.out
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith("-smoke")
    assert (run_dirs[0] / "report" / "index.html").is_file()
