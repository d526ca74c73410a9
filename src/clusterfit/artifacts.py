"""Stage folders, ``meta.json``, atomic writes, and the skip / resume / redo decision.

A stage's folder holds its data files and, written last and atomically, ``meta.json``: the only
sign that the stage is complete. The stage's *fingerprint* hashes its own config and the
fingerprints of its inputs, so a change anywhere upstream changes every fingerprint downstream.

- ``meta.json`` present with the same fingerprint: the stage is done; skip it.
- ``.fingerprint`` present with the same fingerprint but no ``meta.json``: the stage was
  interrupted; it resumes from whatever checkpoint it left in its folder.
- anything else: the folder's old contents are removed and the stage starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clusterfit.errors import ClusterFitError

META = "meta.json"
MARK = ".fingerprint"


def fingerprint(obj: Any) -> str:
    """A stable hex digest of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save a numpy array, atomically."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, _write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes the results."""
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "faiss", "sklearn", "clusterfit"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    return out


class Stage:
    """One stage's folder and its completion state.

    Args:
        run_dir: the run folder ``runs/<name>``.
        name: the stage's folder name (``pretrain``, ``features``, ``clusters``, ``fit``, ...).
        config: the stage's own settings (JSON-able).
        inputs: ``{input name: fingerprint}`` of everything the stage reads.
    """

    def __init__(self, run_dir: Path, name: str, config: Any, inputs: dict[str, str]) -> None:
        self.name = name
        self.dir = Path(run_dir) / name
        self.config = config
        self.inputs = dict(inputs)
        self.fingerprint = fingerprint({"stage": name, "config": config, "inputs": self.inputs})
        self._start = time.time()

    @property
    def meta_path(self) -> Path:
        return self.dir / META

    def meta(self) -> dict[str, Any] | None:
        """The stage's ``meta.json``, or None when absent or unreadable."""
        try:
            return read_json(self.meta_path)
        except (OSError, ValueError):
            return None

    def is_complete(self) -> bool:
        """True when ``meta.json`` exists and records this stage's fingerprint."""
        meta = self.meta()
        return meta is not None and meta.get("fingerprint") == self.fingerprint

    def is_resumable(self) -> bool:
        """True when an interrupted attempt at this same fingerprint left its folder."""
        mark = self.dir / MARK
        return not self.is_complete() and mark.is_file() and mark.read_text() == self.fingerprint

    def begin(self) -> bool:
        """Prepare the folder for work; returns True when resuming an interrupted attempt.

        Old contents from another fingerprint are removed. Call only after the stage's inputs are
        validated, so that bad input leaves earlier artifacts untouched.
        """
        self._start = time.time()
        if self.is_resumable():
            return True
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        (self.dir / MARK).write_text(self.fingerprint)
        return False

    def finish(self, summary: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Write ``meta.json`` (last, atomically) and return it."""
        meta = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "inputs": self.inputs,
            "versions": versions(),
            "seconds": round(time.time() - self._start, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": summary,
            **extra,
        }
        write_json(self.meta_path, meta)
        return meta

    def require(self, what: str) -> dict[str, Any]:
        """The meta of a complete stage, else a :class:`ClusterFitError` naming ``what`` to run."""
        meta = self.meta()
        if meta is None or meta.get("fingerprint") != self.fingerprint:
            state = "has not run" if meta is None else "is out of date for this config"
            raise ClusterFitError(
                f"stage '{self.name}' in {self.dir.parent} {state}: run `clusterfit {what}` "
                "(or `clusterfit run`) with the same config first"
            )
        return meta
