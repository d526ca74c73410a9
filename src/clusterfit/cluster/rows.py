"""Row access for k-means: numpy, memmap, tensor or ``.npy`` rows, read in chunks (ClusterFit §3).

The paper clusters 200M items and refines on all of them (§3); here the rows of X are never
converted as a whole. :class:`RawRows` reads any N x D float input chunk by chunk as float32
tensors; a whole ``.npy`` memmap (as ``np.load(path, mmap_mode="r")`` returns) is read
in place from a private mapping of the file (float32, Linux: the reader thread maps each
chunk's pages ahead, and they are dropped once used) or with ``pread`` into reused buffers, so
the file's pages never pile up in the resident set; other memmaps (views) are read through the
mapping and their pages released after each chunk.
:class:`RowSource` is the slice of rows one process owns (its shard under torch.distributed),
mapped into the clustering space (PCA, L2-normalisation); streamed sources read the next chunk in
a background thread while the current one is assigned. :func:`validate_rows` rejects non-finite
(and, for spherical k-means, all-zero) rows on every rank; :func:`gather_rows` assembles chosen
rows (initial centroids) on every rank.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit import distributed as cfdist
from clusterfit.errors import DataError
from clusterfit.sharded import MANIFEST_SUFFIX, ShardedArray

__all__ = [
    "PREFETCH_CHUNKS",
    "RawRows",
    "RowSource",
    "ShardedRows",
    "bad_rows",
    "gather_rows",
    "normalise_rows",
    "validate_rows",
]

_TAKE_WINDOW_BYTES = 32 << 20  # span of a memmap mapped at once while gathering a subsample
# madvise(MADV_POPULATE_READ) (Linux >= 5.14; Python's mmap module does not name it): map a range
# of a file's pages into the process, reading those not yet in the page cache.
_POPULATE_READ = 22 if sys.platform.startswith("linux") else None
PREFETCH_CHUNKS = 1
"""Chunks a streamed :class:`RowSource` reads ahead of the one being computed on."""


class RawRows:
    """Read access to the rows of X, as float32 tensors, without converting X as a whole.

    Features sharded over several files (a :class:`~clusterfit.sharded.ShardedArray`, or the
    path of its ``.manifest.json``) are read by :class:`ShardedRows`, file by file.
    """

    def __new__(cls, X: Any, what: str = "X") -> RawRows:
        sharded = isinstance(X, ShardedArray) or (
            isinstance(X, (str, Path)) and str(X).endswith(MANIFEST_SUFFIX)
        )
        return super().__new__(ShardedRows if cls is RawRows and sharded else cls)

    def __init__(self, X: Any, what: str = "X") -> None:
        if isinstance(X, (str, Path)):
            try:
                X = np.load(X, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise DataError(f"{what}: cannot read {X!s} as a .npy array ({err})") from err
        if isinstance(X, torch.Tensor):
            if not X.is_floating_point():
                raise DataError(
                    f"{what} has dtype {X.dtype}; k-means needs floating-point features "
                    "(convert with .float())"
                )
            data: Any = X.detach()
            self.device = X.device
        else:
            if not isinstance(X, np.ndarray):
                try:
                    X = np.asarray(X)
                except (TypeError, ValueError) as err:
                    raise DataError(f"{what} is not an array ({type(X).__name__}): {err}") from err
            if X.dtype.kind != "f":
                raise DataError(
                    f"{what} has dtype {X.dtype}; k-means needs floating-point features "
                    "(e.g. X.astype(np.float32))"
                )
            data = X
            self.device = torch.device("cpu")
        if data.ndim != 2:
            raise DataError(
                f"{what} must be 2-D (N rows x D features); got shape {tuple(data.shape)}"
            )
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise DataError(f"{what} is empty (shape {tuple(data.shape)})")
        self.data = data
        self.n, self.d = int(data.shape[0]), int(data.shape[1])
        self.is_tensor = isinstance(data, torch.Tensor)
        self.streamed = isinstance(data, np.memmap)
        # A whole .npy memmap (as np.load(mmap_mode="r") returns) is read with pread() into
        # fresh buffers: no page faults, and the file's pages never count in our resident set.
        self._fd: int | None = None
        if (
            self.streamed
            and isinstance(data.base, mmap.mmap)
            and data.flags.c_contiguous
            and getattr(data, "mode", None) in ("r", "r+", "w+")
            and getattr(data, "filename", None)
        ):
            try:
                self._fd = os.open(data.filename, os.O_RDONLY)
            except OSError:
                self._fd = None
            else:
                weakref.finalize(self, os.close, self._fd)
                self._file_offset = int(data.offset)
                self._row_bytes = self.d * data.dtype.itemsize
        # float32 rows of such a file are read in place from a private mapping of it, each
        # chunk's pages mapped ahead by the reader thread and dropped once used: no copy out of
        # the page cache (pread's copy cost 0.12-0.16 s per GB of the cores the assignment runs
        # on). Where the kernel cannot populate a range, reads fall back to pread.
        self._mapped: np.memmap | None = None
        if self._fd is not None and data.dtype == np.float32 and _POPULATE_READ is not None:
            try:
                self._mapped = np.memmap(
                    data.filename, dtype=np.float32, mode="c", offset=data.offset, shape=data.shape
                )
            except (OSError, ValueError):
                self._mapped = None
        # Whether read() returns views of X rather than copies.
        if self.is_tensor:
            self.zero_copy = data.dtype == torch.float32 and data.is_contiguous()
        else:
            self.zero_copy = (
                not self.streamed
                and data.dtype == np.float32
                and data.flags.c_contiguous
                and data.flags.writeable
            )

    def read(self, start: int, stop: int, buf: np.ndarray | None = None) -> torch.Tensor:
        """Rows [start, stop) as a float32 tensor ((stop - start) x D) on X's device.

        A whole float32 ``.npy`` memmap on Linux: a view of the private mapping, its pages mapped
        now (call :meth:`release` when done with them). Otherwise ``buf``, a reusable 1-D array
        of X's dtype with room for the rows: a whole ``.npy`` memmap is then read into it (no
        fresh pages to fault in), and the tensor is a view of it.
        """
        if self._mapped is not None and self._advise(start, stop, _POPULATE_READ):
            return torch.from_numpy(self._mapped[start:stop])
        if self._fd is not None:
            return torch.from_numpy(_as_float32(self._pread(start, stop, buf)))
        x = self.data[start:stop]
        if self.is_tensor:
            return x.float().contiguous()
        if self.streamed or not x.flags.writeable:
            out = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))
            self._release()
            return out
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (int array, best sorted for memmaps) as a float32 len(idx) x D tensor."""
        if self.is_tensor:
            return self.data[torch.as_tensor(idx, device=self.data.device)].float()
        if not self.streamed:
            return torch.from_numpy(np.array(self.data[idx], dtype=np.float32, order="C"))
        # memmap: gather window by window (_TAKE_WINDOW_BYTES of the file each), releasing the
        # pages after each, so that a sample spread over the whole file never maps all of it
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        out = np.empty((len(idx), self.d), dtype=np.float32)
        window = max(1, _TAKE_WINDOW_BYTES // (self.d * self.data.dtype.itemsize))
        edges = np.searchsorted(ordered, np.arange(0, self.n + window, window))
        for a, b in itertools.pairwise(edges.tolist()):
            if b > a:
                if self._fd is not None:
                    lo, hi = int(ordered[a]), int(ordered[b - 1]) + 1
                    out[order[a:b]] = self._pread(lo, hi)[ordered[a:b] - lo]
                else:
                    out[order[a:b]] = self.data[ordered[a:b]]
                    self._release()
        return torch.from_numpy(out)

    def buffer_maker(self, n_rows: int) -> Callable[[], np.ndarray] | None:
        """A maker of reusable read buffers for ``n_rows`` rows (see :meth:`read`), or None
        when reads cannot use one (X is not a whole ``.npy`` memmap)."""
        if self._fd is None:
            return None
        size, dtype = n_rows * self.d, self.data.dtype
        return lambda: np.empty(size, dtype=dtype)

    def _pread(self, start: int, stop: int, buf: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) read from the memmap's file into a new array of X's dtype (or into
        ``buf``, a 1-D array of that dtype with room for them)."""
        assert self._fd is not None
        size = (stop - start) * self.d
        if buf is not None and buf.dtype == self.data.dtype and buf.size >= size:
            out = buf[:size].reshape(stop - start, self.d)
        else:
            out = np.empty((stop - start, self.d), dtype=self.data.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        pos = self._file_offset + start * self._row_bytes
        done = 0
        while done < len(buf):
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [buf[done:]], pos + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(self._fd, len(buf) - done, pos + done)
                got = len(chunk)
                buf[done : done + got] = chunk
            if got <= 0:
                raise DataError(f"{self.data.filename}: the file ends early (truncated?)")
            done += got
        return out

    def release(self, start: int, stop: int) -> None:
        """Rows [start, stop) returned by :meth:`read` are no longer needed: drop their pages from
        this process (they stay in the OS page cache; a view still held reads them again)."""
        if self._mapped is not None:
            self._advise(start, stop, mmap.MADV_DONTNEED)

    def _advise(self, start: int, stop: int, advice: int | None) -> bool:
        """madvise the private mapping's pages of rows [start, stop); False (and the mapping
        given up for pread) where the kernel refuses."""
        mapping = getattr(self._mapped, "_mmap", None)
        if mapping is None or advice is None:
            return False
        head = self._file_offset % mmap.ALLOCATIONGRANULARITY  # where row 0 lies in the map
        lo = head + start * self._row_bytes
        hi = head + stop * self._row_bytes
        lo -= lo % mmap.PAGESIZE
        try:
            mapping.madvise(advice, lo, hi - lo)
        except (OSError, ValueError):
            self._mapped = None
            return False
        return True

    def _release(self) -> None:
        """Drop the memmap's pages from this process once copied (they stay in the OS page
        cache), so that streaming over a file larger than memory keeps the resident set flat.
        Only for read-only maps (``mode="r"``), where nothing can be lost."""
        mapping = getattr(self.data, "_mmap", None)
        if (
            mapping is not None
            and getattr(self.data, "mode", None) == "r"
            and hasattr(mapping, "madvise")
            and hasattr(mmap, "MADV_DONTNEED")
        ):
            with contextlib.suppress(OSError, ValueError):
                mapping.madvise(mmap.MADV_DONTNEED)


class ShardedRows(RawRows):
    """The rows of a :class:`~clusterfit.sharded.ShardedArray`: each file read as a whole
    ``.npy`` memmap (``pread``, pages never resident), a read spanning files concatenated. A
    rank whose block of rows lies in one file (the extraction and k-means ran on as many
    processes) reads only that file."""

    def __init__(self, X: Any, what: str = "X") -> None:
        if not isinstance(X, ShardedArray):
            X = ShardedArray.open(X)
        self.data = X
        named = zip(X.parts, X.paths, strict=True)
        self.parts = [RawRows(part, f"{what} ({path.name})") for part, path in named]
        self.bounds = [int(b) for b in X.bounds]
        self.n, self.d = X.shape
        self.device = torch.device("cpu")
        self.is_tensor, self.streamed, self.zero_copy = False, True, False
        self._fd = None
        self._mapped = None

    def read(self, start: int, stop: int, buf: np.ndarray | None = None) -> torch.Tensor:
        pieces = []
        for s, part in enumerate(self.parts):
            lo, hi = max(start, self.bounds[s]), min(stop, self.bounds[s + 1])
            if hi > lo:
                pieces.append((part, lo - self.bounds[s], hi - self.bounds[s]))
        if len(pieces) == 1:
            part, a, b = pieces[0]
            return part.read(a, b, buf)
        return torch.cat([part.read(a, b) for part, a, b in pieces])

    def release(self, start: int, stop: int) -> None:
        for s, part in enumerate(self.parts):
            lo, hi = max(start, self.bounds[s]), min(stop, self.bounds[s + 1])
            if hi > lo:
                part.release(lo - self.bounds[s], hi - self.bounds[s])

    def take(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        out = torch.empty((len(idx), self.d), dtype=torch.float32)
        which = self.data.locate(idx)
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            out[torch.from_numpy(sel)] = self.parts[s].take(idx[sel] - self.bounds[s])
        return out

    def buffer_maker(self, n_rows: int) -> Callable[[], np.ndarray] | None:
        makers = [part.buffer_maker(n_rows) for part in self.parts]
        return makers[0] if all(m is not None for m in makers) else None


def _as_float32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.dtype.isnative else x.astype(np.float32)


def _prefetched(
    starts: range,
    read: Callable[[int, np.ndarray | None], torch.Tensor],
    device: torch.device,
    new_buffer: Callable[[], np.ndarray] | None,
    release: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, read(start, buffer)) for each start, read by a background thread ahead of the
    consumer.

    ``release(start)`` (optional) is called for a chunk once the consumer asks for the next one.

    The reader blocks once :data:`PREFETCH_CHUNKS` chunks wait; an error in it is raised here;
    a consumer that stops early stops the reader. With ``new_buffer``, chunks are read into a
    ring of ``PREFETCH_CHUNKS + 2`` reused buffers, so a chunk is valid until the consumer asks
    for the next one.
    """
    ring: list[np.ndarray | None] = [None] * (PREFETCH_CHUNKS + 2)
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=PREFETCH_CHUNKS)
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for i, a in enumerate(starts):
                slot = i % len(ring)
                if new_buffer is not None and ring[slot] is None:
                    ring[slot] = new_buffer()
                if not put((a, read(a, ring[slot]))):
                    return
        except BaseException as err:  # handed to the consumer
            put((-1, err))
            return
        put((-2, None))

    thread = threading.Thread(target=reader, name="kmeans-reader", daemon=True)
    thread.start()
    try:
        while True:
            a, item = q.get()
            if a == -2:
                return
            if a == -1:
                raise item
            yield a, item.to(device)
            del item
            if release is not None:
                release(a)
    finally:
        stop.set()
        thread.join()


class RowSource:
    """``n`` rows owned by this process, read in chunks and mapped into the clustering space."""

    def __init__(
        self,
        read: Callable[[int, int], torch.Tensor],
        take: Callable[[np.ndarray], torch.Tensor],
        n: int,
        *,
        chunk_size: int,
        device: torch.device,
        in_memory: bool,
        zero_copy: bool,
        prefetch: bool = False,
        read_into: Callable[[int, int, np.ndarray | None], torch.Tensor] | None = None,
        new_buffer: Callable[[], np.ndarray] | None = None,
        release: Callable[[int, int], None] | None = None,
    ) -> None:
        self._read, self._take = read, take
        self.n, self.chunk_size, self.device = n, chunk_size, device
        self.in_memory, self.zero_copy = in_memory, zero_copy
        self.prefetch = prefetch
        self._read_into, self._new_buffer = read_into, new_buffer
        self._drop = release  # rows [a, b) read and used: their pages may go
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def of_rows(
        cls, rows: RawRows, start: int, n: int, chunk_size: int, device: torch.device
    ) -> RowSource:
        return cls(
            lambda a, b: rows.read(start + a, start + b),
            lambda idx: rows.take(np.asarray(idx, dtype=np.int64) + start),
            n,
            chunk_size=chunk_size,
            device=device,
            in_memory=not rows.streamed,
            zero_copy=rows.zero_copy and rows.device == device,
            prefetch=rows.streamed,
            read_into=lambda a, b, buf: rows.read(start + a, start + b, buf),
            new_buffer=rows.buffer_maker(chunk_size),
            release=lambda a, b: rows.release(start + a, start + b),
        )

    @classmethod
    def of_tensor(cls, t: torch.Tensor, chunk_size: int) -> RowSource:
        return cls(
            lambda a, b: t[a:b],
            lambda idx: t[torch.as_tensor(idx, device=t.device)],
            int(t.shape[0]),
            chunk_size=chunk_size,
            device=t.device,
            in_memory=True,
            zero_copy=True,
        )

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return self.transform(x) if self.transform is not None else x

    def raw_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, raw rows) for consecutive chunks of ``chunk_size`` rows.

        With ``prefetch`` (rows streamed from a memmap), a reader thread reads the next chunk
        while the caller computes on the current one; at most :data:`PREFETCH_CHUNKS` chunks
        wait in between, so memory stays bounded by a few chunks. Chunks of a whole ``.npy``
        memmap are views of a private mapping of the file (float32 on Linux; their pages
        dropped from the process once the next chunk is asked for) or else read into a ring of
        reused buffers: a chunk is valid until the next one is requested (copy it to keep it).
        """
        starts = range(0, self.n, self.chunk_size)
        end = lambda a: min(a + self.chunk_size, self.n)  # noqa: E731
        drop = self._drop
        release = None if drop is None else lambda a: drop(a, end(a))
        if not self.prefetch or len(starts) < 2:
            for a in starts:
                yield a, self._read(a, end(a)).to(self.device)
                if release is not None:
                    release(a)
            return
        read_into = self._read_into
        if read_into is None:
            yield from _prefetched(
                starts, lambda a, _: self._read(a, min(a + self.chunk_size, self.n)), self.device
            )
            return
        yield from _prefetched(
            starts, lambda a, buf: read_into(a, end(a), buf), self.device, self._new_buffer, release
        )

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, rows in the clustering space) for consecutive chunks."""
        for a, x in self.raw_chunks():
            yield a, (self.transform(x) if self.transform is not None else x)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (local indices) in the clustering space."""
        return self._map(self._take(idx))

    def materialise(self, dim: int) -> None:
        """Keep the mapped rows in memory (once), unless they already are views of X."""
        if self.zero_copy and self.transform is None:
            return
        out = torch.empty((self.n, dim), dtype=torch.float32, device=self.device)
        for a, x in self.chunks():
            out[a : a + x.shape[0]] = x
        self._read = lambda a, b: out[a:b]
        self._take = lambda idx: out[torch.as_tensor(idx, device=out.device)]
        self.transform, self.zero_copy = None, True
        self.prefetch, self._drop = False, None


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of x (B x D) divided by their L2 norm (at least 1e-12): B x D."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def validate_rows(src: RowSource, start: int, spherical: bool, device: torch.device) -> None:
    """Raise DataError (on every rank) if any row is non-finite, or all-zero when spherical."""
    n_bad = torch.zeros(2, dtype=torch.float64, device=device)
    first = torch.full((2, 5), -1, dtype=torch.int64, device=device)
    for a, x in src.raw_chunks():
        for j, bad in enumerate(bad_rows(x, spherical)):
            if len(bad):
                have = int((first[j] >= 0).sum())
                if have < 5:
                    ids = torch.as_tensor(bad[: 5 - have] + (start + a))
                    first[j, have : have + len(ids)] = ids.to(device)
                n_bad[j] += len(bad)
    cfdist.all_reduce_sum(n_bad)
    firsts = cfdist.all_gather_cat(first.reshape(1, 10)).reshape(-1, 2, 5)
    problems = []
    for j, what in enumerate(("NaN or inf values", "all-zero values (spherical k-means)")):
        if n_bad[j] > 0:
            ids = firsts[:, j].flatten()
            ids = sorted(int(i) for i in ids if i >= 0)[:5]
            problems.append(f"{int(n_bad[j])} rows with {what}, e.g. rows {ids}")
    if problems:
        hint = (
            "remove or fix these rows"
            if n_bad[1] == 0
            else "remove these rows (they have no direction) or use spherical=False"
        )
        raise DataError("X has " + "; ".join(problems) + f": {hint}")


def bad_rows(x: torch.Tensor, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Local indices of the rows of x with NaN / inf values, and (spherical) of all-zero rows.

    One pass computes the squared row norms; only rows whose norm is non-finite (or zero) are
    checked element by element (a huge finite row can overflow the norm, a tiny one underflow).
    """
    if x.device.type == "cpu":
        xn = x.numpy()
        sq = np.einsum("ij,ij->i", xn, xn)
        cand = np.nonzero(~np.isfinite(sq))[0]
        nonfinite = cand[~np.isfinite(xn[cand]).all(1)]
        zero = np.zeros(0, dtype=np.int64)
        if spherical:
            cand = np.nonzero(sq == 0)[0]
            zero = cand[(xn[cand] == 0).all(1)]
        return nonfinite, zero
    sq = (x * x).sum(1)
    cand = torch.nonzero(~torch.isfinite(sq))[:, 0]
    nonfinite = cand[~torch.isfinite(x[cand]).all(1)].cpu().numpy()
    zero = np.zeros(0, dtype=np.int64)
    if spherical:
        cand = torch.nonzero(sq == 0)[:, 0]
        zero = cand[(x[cand] == 0).all(1)].cpu().numpy()
    return nonfinite, zero


def gather_rows(
    src: RowSource, start: int, chosen: np.ndarray, dim: int, device: torch.device
) -> torch.Tensor:
    """Rows ``chosen`` (global training indices, in that order) on every rank: each rank fills in
    the rows it owns, and a sum over ranks assembles them. Returns len(chosen) x dim float32."""
    buf = torch.zeros((len(chosen), dim), dtype=torch.float32, device=device)
    local = chosen - start
    mine = np.nonzero((local >= 0) & (local < src.n))[0]
    if len(mine):
        order = np.argsort(local[mine])
        rows = src.take(local[mine][order])
        buf[torch.as_tensor(mine[order], device=device)] = rows.to(device)
    return cfdist.all_reduce_sum(buf)
