"""On-disk cache of decoded image folders and file lists, read back as memory maps.

Decoding tens of thousands of files takes seconds to minutes; the decoded pixels are stored once
as a raw ``<key>.npy`` (uint8 N x C x H x W) with a small ``<key>.json`` beside it (fingerprint,
source, shape). A reader maps the ``.npy`` (``np.load(..., mmap_mode="c")``): nothing is read
until rows are indexed, those rows come from the page cache, and every process (every rank of a
``torchrun`` job) shares the same pages instead of holding its own copy.

The key is a sha256 over the sorted relative paths, byte sizes and modification times of the files,
their labels and class names, and the requested image size, so adding, removing, editing or
touching a file (or relabelling it) makes a new entry. An entry is written chunk by chunk into a
temporary ``.npy`` while the images are decoded (:class:`EntryWriter`), then renamed into place
(``os.replace``), the ``.json`` last; an entry is used only when both files exist and agree, so a
reader never sees a partial entry and an interrupted write leaves nothing that is read. Files are
created with mode 0644 less the umask (the cache may be shared). Entries are never changed in
place (a running process may map one); deleting them is safe at any time (a mapped file's data
lives until it is unmapped).

Cache folder: the ``cache_dir`` argument, else ``$CLUSTERFIT_CACHE/images``, else
``~/.cache/clusterfit/images``. Old entries are not removed automatically; delete the folder to
reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from pathlib import Path

import numpy as np

from clusterfit.data.filelist import FileList
from clusterfit.errors import DataError

CACHE_VERSION = 2


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


def entry_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """(pixels ``<key>.npy``, metadata ``<key>.json``) of entry ``key``."""
    return Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"


def open_entry(cache_dir: Path, key: str) -> tuple[np.ndarray, dict] | None:
    """(images: copy-on-write memmap, uint8 N x C x H x W; meta dict) of entry ``key``.

    None when the entry is absent or incomplete (no ``.json``: never finished); a warning and None
    when it is unreadable or its two files disagree. Writing into the returned array never changes
    the file (``mmap_mode="c"``).
    """
    npy, meta_path = entry_paths(cache_dir, key)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy, mmap_mode="c", allow_pickle=False)
        if images.dtype != np.uint8 or list(images.shape) != list(meta["shape"]):
            raise ValueError(f"shape {images.shape} / dtype {images.dtype} != meta {meta['shape']}")
    except Exception as e:
        warnings.warn(
            f"ignoring unreadable image cache entry {npy} ({e}); decoding again.", stacklevel=3
        )
        return None
    return images, meta


def _create(path: Path) -> None:
    """Create an empty file with mode 0644 less the umask (fails if it exists)."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


class EntryWriter:
    """Writes entry ``key`` as it is decoded: :meth:`allocate`, fill, :meth:`commit`.

    ``allocate(shape)`` maps a fresh temporary ``.npy`` in the cache folder and returns it
    (writable memmap); called again (a greyscale set that turns out to hold colour images) it
    maps a new one and deletes the old (still readable through its mapping until dropped).
    ``commit(meta)`` flushes, renames the ``.npy`` then the ``.json`` into place and returns the
    entry opened as :func:`open_entry` does. ``abort()`` removes the temporary file. Raises
    OSError when the cache folder cannot be written; the caller then decodes elsewhere.
    """

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.tmp: Path | None = None
        self.array: np.ndarray | None = None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.cache_dir, os.W_OK):
            raise PermissionError(f"cache folder {self.cache_dir} is not writable")

    def allocate(self, shape: tuple[int, int, int, int]) -> np.ndarray:
        """A writable uint8 memmap of ``shape`` in a new temporary file of the cache folder."""
        old = self.tmp
        tmp = self.cache_dir / f".{self.key[:16]}.{secrets.token_hex(4)}.npy.tmp"
        _create(tmp)
        self.tmp = tmp
        self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if old is not None:
            old.unlink(missing_ok=True)
        return self.array

    def commit(self, meta: dict) -> tuple[np.ndarray, dict]:
        """Flush and rename into place; returns (read-back copy-on-write memmap, meta)."""
        if self.array is None or self.tmp is None:
            raise RuntimeError("commit() before allocate()")
        npy, meta_path = entry_paths(self.cache_dir, self.key)
        meta = {**meta, "shape": list(self.array.shape), "version": CACHE_VERSION}
        self.array.flush()  # type: ignore[attr-defined]
        self.array = None
        os.replace(self.tmp, npy)
        self.tmp = None
        meta_tmp = self.cache_dir / f".{self.key[:16]}.{secrets.token_hex(4)}.json.tmp"
        _create(meta_tmp)
        meta_tmp.write_text(json.dumps(meta))
        os.replace(meta_tmp, meta_path)
        images = np.load(npy, mmap_mode="c", allow_pickle=False)
        return images, meta

    def abort(self) -> None:
        """Remove the temporary file, if any."""
        self.array = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
