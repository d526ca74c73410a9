"""The cluster stage passes ``cluster.backend`` to k-means (both k-means methods) and records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterfit.cli import main
from clusterfit.cluster.kmeans import KMeans
from clusterfit.config import load_config
from clusterfit.errors import ConfigError

TINY = [
    "data.limit=120",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=32",
    "pretrain.arch_kwargs.width=8",
    "cluster.k=10",
    "cluster.n_iter=3",
    "device=cpu",
    "progress=false",
]


def test_backend_choices() -> None:
    for name in ("auto", "fused", "faiss", "torch"):
        assert load_config(overrides=[f"cluster.backend={name}"]).cluster.backend == name
    with pytest.raises(ConfigError, match=r"cluster\.backend"):
        load_config(overrides=["cluster.backend=numba"])
    for name in ("auto", "bfloat16", "float32"):
        assert load_config(overrides=[f"cluster.screen={name}"]).cluster.screen == name
    with pytest.raises(ConfigError, match=r"cluster\.screen"):
        load_config(overrides=["cluster.screen=int8"])


@pytest.mark.parametrize(
    ("backend", "expected"), [("fused", "fused"), ("torch", "torch"), ("auto", "fused")]
)
def test_cluster_stage_uses_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, expected: str
) -> None:
    used: list[str] = []
    resolve = KMeans._resolve_backend

    def spy(self: KMeans, rows: object) -> tuple:
        out = resolve(self, rows)
        used.append(out[0])
        return out

    monkeypatch.setattr(KMeans, "_resolve_backend", spy)
    args = [*TINY, f"out_dir={tmp_path}", f"cluster.backend={backend}"]
    for stage in ("pretrain", "extract", "cluster"):
        assert main([stage, *args]) == 0
    stats = json.loads((tmp_path / "demo" / "clusters" / "stats.json").read_text())
    assert stats["backend"] == expected
    # the tiny run's K and D are below the bfloat16 screen's minimum: the float32 GEMM
    assert stats.get("screen") == ("float32" if expected == "fused" else None)
    assert used == [expected]

    used.clear()
    assert main(["cluster", *args, "cluster.method=per_label"]) == 0
    assert used and set(used) == {expected}  # one k-means per label, each on that backend
