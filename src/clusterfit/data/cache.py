"""On-disk cache of decoded image folders and file lists.

Decoding tens of thousands of files takes seconds to minutes; the decoded uint8 array is stored
once as an uncompressed ``.npz`` in the cache folder and read back in a fraction of that. The key
is a sha256 over the sorted relative paths, byte sizes and modification times of the files, their
labels and class names, and the requested image size, so adding, removing, editing or touching a
file (or relabelling it) makes a new entry. Entries are written to a temporary file and renamed
into place (``os.replace``), so a reader never sees a partial file and concurrent writers are safe.

Cache folder: the ``cache_dir`` argument, else ``$CLUSTERFIT_CACHE/images``, else
``~/.cache/clusterfit/images``. Old entries are not removed automatically; delete the folder to
reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from clusterfit.data.filelist import FileList
from clusterfit.errors import DataError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$CLUSTERFIT_CACHE/images`` when that is set, else ``~/.cache/clusterfit/images``."""
    root = os.environ.get("CLUSTERFIT_CACHE")
    if root:
        return Path(root).expanduser() / "images"
    return Path.home() / ".cache" / "clusterfit" / "images"


def cache_key(files: FileList, size: tuple[int, int] | None) -> str:
    """Hex sha256 of (relative path, byte size, mtime, label) per file, classes and image size."""
    names = files.names()
    entries = []
    for name, path, label in zip(names, files.paths, files.labels.tolist(), strict=True):
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        entries.append((name, st.st_size, st.st_mtime_ns, label))
    entries.sort()
    payload = {
        "version": CACHE_VERSION,
        "files": entries,
        "classes": files.classes,
        "size": list(size) if size else None,
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def load_entry(cache_dir: Path, key: str) -> tuple[np.ndarray, dict] | None:
    """(images uint8 N x C x H x W, meta dict) of entry ``key``; None if absent or unreadable."""
    path = Path(cache_dir) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
            meta = json.loads(str(f["meta"]))
    except Exception as e:
        warnings.warn(
            f"ignoring unreadable image cache entry {path} ({e}); decoding again.", stacklevel=3
        )
        return None
    return images, meta


def save_entry(cache_dir: Path, key: str, images: np.ndarray, meta: dict) -> Path | None:
    """Write the entry atomically (temp file + ``os.replace``); warn and return None on failure."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}.npz"
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=cache_dir)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, meta=np.array(json.dumps(meta)))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, path)
        return path
    except OSError as e:
        warnings.warn(
            f"could not write image cache {path} ({e}); continuing without it.", stacklevel=3
        )
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return None
