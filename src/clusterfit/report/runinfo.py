"""What a finished run folder says about itself: its stages' ``meta.json``, its recorded config,
its clusterings and training logs, read once for the report.

A run (Yan et al., CVPR 2020, §3: N_pre -> features -> k-means -> N_cf -> probes) is a folder
with one sub-folder per stage (see :mod:`clusterfit.stages.graph` for their names). Nothing here
computes anything new: it reads what the stages wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterfit.errors import DataError
from clusterfit.stages.graph import FOLDERS
from clusterfit.stages.report import RUN_CONFIG, RUN_RECORD

__all__ = ["RunInfo", "load_run"]

#: stage kinds in pipeline order (folder prefix -> kind)
_KIND_OF = {v: k for k, v in FOLDERS.items()}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epochs of a training ``log.jsonl`` (one JSON object per line; bad lines skipped)."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            out.append(row)
    return out


@dataclass
class RunInfo:
    """One run folder as the report sees it.

    metas: stage folder name -> its ``meta.json`` (complete stages only).
    record: ``run.json`` (``config``, ``argv``, ``started``), or None for a run made before it
        was written.
    logs: training folder name (``pretrain``, ``fit``, ``baseline-pre2x``, ...) -> epochs.
    """

    path: Path
    name: str
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any] | None:
        """The run's resolved config (``RunConfig`` as a dict), when recorded."""
        return (self.record or {}).get("config")

    @property
    def config_path(self) -> Path | None:
        p = self.path / RUN_CONFIG
        return p if p.is_file() else None

    def folders(self, kind: str) -> list[str]:
        """Complete stage folders of a kind (``cluster`` -> ``clusters``, ``clusters-k50``, ...)."""
        base = FOLDERS[kind]
        return sorted(f for f in self.metas if f == base or f.startswith(base + "-"))

    def meta(self, folder: str) -> dict[str, Any]:
        return self.metas.get(folder, {})

    def stats(self, folder: str) -> dict[str, Any]:
        """A clustering's ``stats.json`` (empty when absent)."""
        return _read(self.path / folder / "stats.json") or {}

    def features_folder(self, clusters_folder: str) -> str | None:
        """The features folder a clustering was made from (matched by fingerprint)."""
        want = self.meta(clusters_folder).get("inputs", {}).get("features")
        for f in self.folders("extract"):
            if self.meta(f).get("fingerprint") == want:
                return f
        return None

    @property
    def seed(self) -> int | None:
        for m in self.metas.values():
            cfg = m.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("seed"), int):
                return int(cfg["seed"])
        return None

    def seconds(self) -> dict[str, float]:
        """Wall seconds per stage folder, from ``meta.json``."""
        return {f: float(m.get("seconds") or 0.0) for f, m in self.metas.items()}

    def versions(self) -> dict[str, str]:
        """Library versions (those of the last stage to finish)."""
        latest = max(self.metas.values(), key=lambda m: str(m.get("finished")), default={})
        return dict(latest.get("versions") or {})


def _stage_order(folder: str) -> tuple[int, str]:
    kinds = list(FOLDERS)
    kind = _KIND_OF.get(folder.split("-", 1)[0])
    return (kinds.index(kind) if kind else len(kinds), folder)


def load_run(path: str | Path) -> RunInfo:
    """Read a run folder: every complete stage's meta, ``run.json``, and the training logs.

    Raises:
        DataError: ``path`` is not a folder or holds no finished stage.
    """
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p} is not a run folder (runs/<name>)")
    metas = {}
    for meta_path in p.glob("*/meta.json"):
        meta = _read(meta_path)
        if isinstance(meta, dict) and meta.get("fingerprint"):
            metas[meta_path.parent.name] = meta
    metas = dict(sorted(metas.items(), key=lambda kv: _stage_order(kv[0])))
    if not metas:
        raise DataError(f"{p} holds no finished stage: run `clusterfit run` first")
    record = _read(p / RUN_RECORD)
    info = RunInfo(p, p.name, metas, record if isinstance(record, dict) else None)
    for folder in metas:
        log = p / folder / "log.jsonl"
        if log.is_file():
            info.logs[folder] = read_log(log)
    return info
