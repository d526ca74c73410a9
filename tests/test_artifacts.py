"""Stage folders: skip when complete, resume when interrupted, redo when the config changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clusterfit.artifacts import Stage, fingerprint, read_json, save_npy, write_json
from clusterfit.errors import ClusterFitError


def test_fingerprint_is_order_free_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_stage_lifecycle(tmp_path: Path) -> None:
    st = Stage(tmp_path, "s", {"k": 1}, {"up": "abc"})
    assert not st.is_complete() and not st.is_resumable()
    assert st.begin() is False
    (st.dir / "partial.bin").write_bytes(b"x")
    again = Stage(tmp_path, "s", {"k": 1}, {"up": "abc"})
    assert again.is_resumable()
    assert again.begin() is True
    assert (again.dir / "partial.bin").exists(), "resuming keeps the stage's partial work"
    meta = again.finish({"value": 3})
    assert meta["summary"] == {"value": 3} and "torch" in meta["versions"]
    assert Stage(tmp_path, "s", {"k": 1}, {"up": "abc"}).is_complete()
    changed = Stage(tmp_path, "s", {"k": 2}, {"up": "abc"})
    assert not changed.is_complete() and not changed.is_resumable()
    assert not Stage(tmp_path, "s", {"k": 1}, {"up": "other"}).is_complete()
    changed.begin()
    assert not (changed.dir / "partial.bin").exists(), "a new config starts afresh"
    assert not changed.meta_path.exists()


def test_require_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ClusterFitError, match="clusterfit cluster"):
        Stage(tmp_path, "clusters", {}, {}).require("cluster")


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": np.float32(1.5), "n": np.int64(2)})
    save_npy(tmp_path / "a.npy", np.arange(4))
    assert read_json(tmp_path / "a.json") == {"x": 1.5, "n": 2}
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy"]
