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

import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clusterfit.errors import ClusterFitError, StorageError

META = "meta.json"
MARK = ".fingerprint"
LOCK = ".lock"


def file_mode() -> int:
    """The mode a plain new file gets here: 0666 less the process's umask (e.g. 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def storage_error(path: Path, exc: BaseException) -> StorageError:
    """One line naming ``path`` and the cause of a failed write (no space, not writable, ...).

    ``torch.save`` reports a full disk as "unexpected pos ..."; that case is recognised by the
    free space left.
    """
    path = Path(path)
    code = getattr(exc, "errno", None)
    where = path.parent if path.parent.exists() else Path(".")
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or (
        code is None and free is not None and free < 64 << 20
    ):
        cause = {errno.EFBIG: "file size limit reached"}.get(code, "no space left on device")
        left = f", {free / 2**20:.0f} MiB free" if free is not None else ""
        return StorageError(
            f"could not write {path}: {cause}{left}; free some space or choose another out_dir"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"could not write {path}: {os.strerror(code)}; make the folder writable or choose "
            "another out_dir"
        )
    return StorageError(f"could not write {path}: {type(exc).__name__}: {exc}")


def fingerprint(obj: Any) -> str:
    """A stable hex digest of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader sees the old file or the new one, never a part. The file gets the mode a plain new
    file would (umask respected). A failed write (full disk, read-only folder) raises a one-line
    :class:`~clusterfit.errors.StorageError` naming ``path``; the old file is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, file_mode())
        write(Path(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if (
            isinstance(e, RuntimeError)
            and "unexpected pos" not in str(e)
            and "Stream" not in str(e)
        ):
            raise
        raise storage_error(path, e) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


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


def git_commit() -> str | None:
    """The git commit of the clusterfit source tree (with ``+dirty`` for local changes), or None
    when it is not a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_VERSIONS: dict[str, str] | None = None


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes the results, and the git
    commit of clusterfit when it runs from a checkout (computed once per process)."""
    global _VERSIONS
    if _VERSIONS is None:
        out = {"python": platform.python_version()}
        for name in ("torch", "torchvision", "numpy", "faiss", "sklearn", "clusterfit"):
            try:
                module = __import__(name)
                out[name] = str(getattr(module, "__version__", "?"))
            except ImportError:
                continue
        commit = git_commit()
        if commit:
            out["clusterfit_commit"] = commit
        _VERSIONS = out
    return dict(_VERSIONS)


class RunLock:
    """An exclusive lock on a run folder (``fcntl.flock`` on ``<run>/.lock``), so two processes
    never write one run at once: the second waits, saying so, or with ``wait=False`` refuses.

    Use as a context manager; the lock goes with the process (also when it is killed).
    """

    def __init__(self, run_dir: Path, wait: bool = True, say: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.wait = wait
        self.say = say
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as e:
            raise storage_error(path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if not self.wait:
                os.close(fd)
                raise ClusterFitError(
                    f"{self.run_dir} is in use by another clusterfit process (pid {holder}); "
                    "run again when it has finished, or without --no-wait to wait for it"
                ) from None
            self.say(f"waiting for another clusterfit process (pid {holder}) using {self.run_dir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
        """True when ``meta.json`` exists and records this stage's fingerprint.

        Raises :class:`StorageError` when it does but a file it lists is gone or changed size
        (the stage folder was damaged after it finished).
        """
        meta = self.meta()
        if meta is None or meta.get("fingerprint") != self.fingerprint:
            return False
        for rel, size in (meta.get("files") or {}).items():
            path = self.dir / rel
            if not path.is_file() or path.stat().st_size != size:
                state = "is missing" if not path.is_file() else "changed size"
                raise StorageError(
                    f"stage '{self.name}' in {self.dir.parent} is damaged: {path} {state}; rerun "
                    f"with --redo {self.name}, or delete {self.dir}"
                )
        return True

    def outputs(self) -> dict[str, int]:
        """``{relative path: size}`` of the stage's data files (what ``meta.json`` lists)."""
        out = {}
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir)
            hidden = rel.name.startswith(".") or rel.parts[0] in (META, MARK, "tb")
            if path.is_file() and not hidden:
                out[rel.as_posix()] = path.stat().st_size
        return out

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
        try:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
        except OSError as e:
            raise storage_error(self.dir, e) from e
        write_text(self.dir / MARK, self.fingerprint)
        return False

    def remove(self) -> None:
        """Delete the stage's folder (``--redo``)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)

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
            "files": self.outputs(),
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
