"""The README's Python example runs as written, in a smoke form (a tiny subset, one epoch)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import clusterfit

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.limit=96",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=32",
    "cluster.n_iter=3",
    "probe.targets.0.limit=64",
    "probe.targets.0.test_limit=64",
    "probe.n_updates=20",
    "probe.lrs=[0.01]",
    "probe.knn=false",
    "progress=false",
]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no Python example"
    real_load = clusterfit.load_config

    def small(recipe=None, overrides=()):
        if recipe is not None and not Path(recipe).is_absolute():
            recipe = ROOT / recipe  # recipes are named relative to the repository
        return real_load(recipe, [*overrides, *SMALL])

    monkeypatch.setattr(clusterfit, "load_config", small)
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "rotnet" / "probe" / "meta.json").is_file()
    assert (tmp_path / "runs" / "mine" / "probe" / "meta.json").is_file()
