"""Every recipe in configs/ runs end to end with --smoke on the bundled data."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterfit.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_smoke(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "run",
            "--config",
            str(recipe),
            "--smoke",
            f"out_dir={tmp_path}",
            "progress=false",
            "probe.layers=[res4,res5]",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "N_cf" in captured.out
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith("-smoke")
    assert (run_dirs[0] / "report" / "index.html").is_file()
