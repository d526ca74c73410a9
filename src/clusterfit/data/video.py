"""Video datasets: frames decoded once into a memory-mapped uint8 cache, clips gathered by index.

ClusterFit on video (Yan et al., CVPR 2020, §4.1.2, Table 5) trains an R(2+1)D N_pre on weakly
labelled videos, clusters its *video-level* features (the features of several clips of a video,
averaged) and trains N_cf from scratch on the clusters. A clip is ``T`` frames taken every
``stride`` frames, each frame resized so that its shorter side is ``S`` and centre-cropped to
``S x S`` (a fixed shape: the orientation of a video does not show in the shape of its clips), then
cropped to ``C x C`` by the model's input pipeline (random crop + flip for training, centre crop
for evaluation). Paper values S=128, C=112, T=32; CPU values S=64, C=56, T=8.

Storage: every video is decoded once with PyAV; its frames (at ``S x S``, RGB) are appended to
one raw uint8 file (F x 3 x S x S, F = frames of all videos) with the first frame and length of
each video, and read back as a memory map. A clip is gathered from that map by frame index, so the
pixels of one batch are read when it is indexed, every epoch picks new clip positions (temporal
jitter) without decoding again, and a process's own memory does not grow with the number of
videos. Entries live in ``$CLUSTERFIT_CACHE/videos`` (else ``~/.cache/clusterfit/videos``),
keyed by the relative paths, byte sizes, modification times and labels of the files, ``S`` and
``fps``; the clip settings (T, stride, clips per video, crop) are not part of the key since the
cached frames do not depend on them (they are part of the dataset's fingerprint). An entry is
written under a temporary name and renamed into place, its ``.json`` last.

Policies (stated, and counted in :attr:`VideoSet.summary`):

* a video shorter than one clip (fewer than ``(T - 1) * stride + 1`` frames) is **looped**: frame
  indices wrap around (``n_looped``);
* mixed frame rates: frames are used as decoded (the stride counts frames), unless ``fps`` is
  set, in which case each video is resampled to ``fps`` (for each output time ``k / fps`` the
  decoded frame nearest in time); the frame rates seen are listed in the summary;
* mixed frame sizes (also within a video): every frame is resized to ``S x S`` as above;
* a corrupt file, an empty (0-byte) file, a file with no video stream (audio only), a file from
  which no frame decodes: a :class:`~clusterfit.errors.DataError` naming the file, raised while
  the set is loaded, before any training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit import distributed
from clusterfit.data.decode import cover_size
from clusterfit.data.filelist import FileList, read_csv
from clusterfit.data.folders import list_image_folder
from clusterfit.data.images import as_tensor, balanced_indices
from clusterfit.errors import DataError

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv"}
)
VIDEO_CACHE_VERSION = 1
#: decoded frames are written to the cache in groups of this many
WRITE_FRAMES = 64


def _sha256(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def is_video_file(name: str) -> bool:
    """True for a non-hidden file name with a video extension (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def is_video_source(source: str | os.PathLike, split: str | None = None) -> bool:
    """True when ``source`` is a folder (or its ``split`` sub-folder) holding video files at any
    depth, or a CSV file list whose first listed path has a video extension."""
    path = Path(os.path.expanduser(os.fspath(source)))
    if path.is_dir():
        root = path / split if split is not None and (path / split).is_dir() else path
        for _, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(is_video_file(f) for f in filenames):
                return True
        return False
    if path.is_file() and path.suffix.lower() == ".csv":
        import csv

        with (
            contextlib.suppress(OSError, UnicodeDecodeError, csv.Error),
            open(path, newline="", encoding="utf-8-sig") as f,
        ):
            for row in csv.DictReader(f):
                cell = (row.get("path") or "").strip()
                if cell:
                    return is_video_file(os.path.basename(cell))
    return False


@dataclass
class VideoClipSettings:
    """How clips are cut from the decoded frames.

    clip_frames: T, frames per clip. frame_stride: frames between two frames of a clip.
    clips_per_video: clips uniformly spaced over a video whose features are averaged into the
    video-level feature (paper: 6).
    """

    clip_frames: int = 8
    frame_stride: int = 2
    clips_per_video: int = 6

    @property
    def span(self) -> int:
        """Frames a clip covers: ``(T - 1) * stride + 1``."""
        return (self.clip_frames - 1) * self.frame_stride + 1


class VideoClips:
    """``VideoSet.images``: indexed like a uint8 N x C x T x S x S tensor.

    ``clips[key]`` (an int, a slice, an int array / tensor / list) gathers, for each video
    selected, the middle one of its ``clips_per_video`` evaluation clips (a deterministic clip,
    what code written for image sets sees: BatchNorm re-estimation, shape checks). Feature
    extraction averages over all the clips (:meth:`VideoSet.eval_clips`); training draws a random
    clip position per video (:meth:`VideoSet.training_clips`).
    """

    def __init__(self, videos: VideoSet) -> None:
        self.videos = videos

    @property
    def shape(self) -> torch.Size:
        v = self.videos
        s = v.frames.shape[-1]
        return torch.Size((len(v.starts), v.frames.shape[1], v.clip.clip_frames, s, s))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def device(self) -> torch.device:
        return self.videos.frames.device

    @property
    def ndim(self) -> int:
        return 5

    def dim(self) -> int:
        return 5

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self.videos.starts)

    def contiguous(self) -> VideoClips:
        return self

    def __getitem__(self, key: Any) -> torch.Tensor:
        idx = np.arange(len(self))[_as_index(key)]
        scalar = np.ndim(idx) == 0
        idx = np.atleast_1d(idx)
        k = self.videos.clip.clips_per_video // 2
        out = self.videos.eval_clips(idx, k)
        return out[0] if scalar else out

    def __repr__(self) -> str:
        return f"VideoClips({tuple(self.shape)})"


def _as_index(key: Any) -> Any:
    if isinstance(key, torch.Tensor):
        return key.cpu().numpy()
    if isinstance(key, range):
        return slice(key.start, key.stop, key.step)
    return key


@dataclass(repr=False)
class VideoSet:
    """A video dataset: the interface of :class:`~clusterfit.data.ImageSet`, items are videos.

    frames: uint8 tensor F x C x S x S (C = 3) over the memory-mapped cache: the frames of every
        video, one after the other.
    starts, lengths: int64 (N,): video i is ``frames[starts[i] : starts[i] + lengths[i]]``.
    labels: int64 (N,), -1 where unknown. classes: class names.
    source, fingerprint: as for images; the fingerprint covers the decoded frames, the clip
        settings and the crop.
    crop_size: C, the square size the models see (random crop for training, centre crop else).
    clip: :class:`VideoClipSettings`.
    summary: what loading found (videos, frames, looped short videos, frame rates, sizes); goes
        to the ``meta.json`` of the stages that read the set.

    ``images`` (:class:`VideoClips`) is indexed like a uint8 N x C x T x S x S tensor.
    """

    frames: torch.Tensor
    starts: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str
    fingerprint: str
    crop_size: int | None = None
    clip: VideoClipSettings = field(default_factory=VideoClipSettings)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.dtype != torch.uint8 or self.frames.ndim != 4:
            raise TypeError("VideoSet.frames must be a uint8 tensor F x C x S x S")
        self.starts = np.asarray(self.starts, dtype=np.int64).reshape(-1)
        self.lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.starts) == len(self.lengths) == len(self.labels)):
            raise ValueError("starts, lengths and labels must have one entry per video")
        if len(self.lengths) and self.lengths.min() < 1:
            raise ValueError("every video needs at least one frame")
        s = int(self.frames.shape[-1])
        if self.crop_size is not None and not 1 <= int(self.crop_size) <= s:
            raise DataError(
                f"crop_size {self.crop_size} does not fit in the {s} x {s} frames of "
                f"{self.source}; use a crop_size of at most {s} or a larger image_size"
            )
        for name in ("clip_frames", "frame_stride", "clips_per_video"):
            if getattr(self.clip, name) < 1:
                raise DataError(f"video {name} must be at least 1, got {getattr(self.clip, name)}")
        self.classes = list(self.classes)

    # ------------------------------------------------------------------ the ImageSet interface
    @property
    def images(self) -> VideoClips:
        """Indexed like a uint8 N x C x T x S x S tensor (see :class:`VideoClips`)."""
        return VideoClips(self)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def has_labels(self) -> bool:
        return len(self) > 0 and bool((self.labels >= 0).all())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> VideoSet:
        """The videos at ``indices`` (ints or a boolean mask); the frames are shared."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return VideoSet(
            frames=self.frames,
            starts=self.starts[idx],
            lengths=self.lengths[idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            source=f"{self.source} [{len(idx)} of {len(self)}]",
            fingerprint=_sha256(self.fingerprint, "subset", idx.tobytes()),
            crop_size=self.crop_size,
            clip=self.clip,
            summary=dict(self.summary),
        )

    # ------------------------------------------------------------------ clips
    def clip_starts(self, idx: np.ndarray, k: int) -> np.ndarray:
        """First frame (within its video) of evaluation clip ``k`` of each video ``idx``: the
        ``clips_per_video`` clips are uniformly spaced from the first to the last possible start
        (all at 0 for a video shorter than a clip)."""
        n = self.clip.clips_per_video
        room = np.maximum(self.lengths[idx] - self.clip.span, 0)
        if n == 1:
            return room // 2
        return np.rint(room * (k / (n - 1))).astype(np.int64)

    def gather(self, idx: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
        """uint8 B x C x T x S x S: clip of video ``idx[b]`` starting at frame ``offsets[b]``
        (within the video); frame indices past a video's end wrap around (the loop policy)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        t = np.arange(self.clip.clip_frames, dtype=np.int64) * self.clip.frame_stride
        within = (np.asarray(offsets, dtype=np.int64)[:, None] + t) % self.lengths[idx, None]
        flat = torch.from_numpy((self.starts[idx, None] + within).reshape(-1))
        x = self.frames[flat]  # B*T x C x S x S
        b, s = len(idx), x.shape[-1]
        return x.view(b, self.clip.clip_frames, -1, s, s).permute(0, 2, 1, 3, 4).contiguous()

    def eval_clips(self, idx: Sequence[int] | np.ndarray, k: int) -> torch.Tensor:
        """Evaluation clip ``k`` (of ``clips_per_video``) of each video: uint8 B x C x T x S x S."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.gather(idx, self.clip_starts(idx, k))

    def training_clips(
        self, idx: torch.Tensor | np.ndarray, generator: torch.Generator
    ) -> torch.Tensor:
        """A clip at a random position of each video (temporal jitter): uint8 B x C x T x S x S.
        Positions are drawn from ``generator``, so an epoch's clips are reproducible."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        idx = idx.reshape(-1)
        room = np.maximum(self.lengths[idx] - self.clip.span, 0) + 1
        u = torch.rand(len(idx), generator=generator, device=generator.device).cpu().double()
        offsets = np.minimum((u.numpy() * room).astype(np.int64), room - 1)
        return self.gather(idx, offsets)

    def __repr__(self) -> str:
        n, c, t, s, _ = self.images.shape
        crop = f", crop {self.crop_size}" if self.crop_size is not None else ""
        return (
            f"VideoSet({n} videos, clips {c} x {t} x {s} x {s}{crop}, stride "
            f"{self.clip.frame_stride}, {len(self.classes)} classes, source={self.source!r}, "
            f"fingerprint={self.fingerprint[:12]})"
        )


# ---------------------------------------------------------------------- decoding
def _import_av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency
        raise DataError(
            'video datasets are decoded with PyAV: pip install av (or pip install -e ".[video]")'
        ) from e
    return av


def _frame_rgb(frame: Any, size: int) -> np.ndarray:
    """One decoded frame, resized to cover ``size x size`` (area averaging) and centre-cropped:
    uint8 3 x size x size."""
    w, h = int(frame.width), int(frame.height)
    nw, nh = cover_size(w, h, size, size)
    arr = frame.to_ndarray(width=nw, height=nh, format="rgb24", interpolation="AREA")
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size].transpose(2, 0, 1))


def decode_video(
    path: str, size: int, fps: float | None, emit: Any
) -> tuple[int, float | None, tuple[int, int]]:
    """Decode ``path``: every frame (or, with ``fps``, the frame nearest to each time ``k / fps``)
    at ``3 x size x size``, passed in groups (uint8 n x 3 x size x size) to ``emit``.

    Returns (frames emitted, the stream's average frame rate or None, (width, height) of the first
    frame). Raises DataError naming the file for an empty or unreadable file, a file with no video
    stream, or one from which no frame decodes.
    """
    av = _import_av()
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"cannot decode video {path}: the file is empty (0 bytes)")
    except OSError as e:
        raise DataError(f"cannot read video {path}: {e}") from e
    group: list[np.ndarray] = []
    count = 0
    first_size: tuple[int, int] = (0, 0)
    rate: float | None = None

    def push(a: np.ndarray) -> None:
        nonlocal count
        group.append(a)
        count += 1
        if len(group) >= WRITE_FRAMES:
            emit(np.stack(group))
            group.clear()

    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise DataError(
                    f"cannot use video {path}: it has no video stream (streams: "
                    f"{', '.join(kinds)}). Remove it or replace it with a video file."
                )
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.average_rate:
                rate = float(stream.average_rate)
            prev: tuple[float, np.ndarray] | None = None
            k = 0  # next output time index (with fps)
            for frame in container.decode(stream):
                if count == 0 and prev is None:
                    first_size = (int(frame.width), int(frame.height))
                a = _frame_rgb(frame, size)
                if fps is None:
                    push(a)
                    continue
                t = float(frame.time) if frame.time is not None else (prev[0] if prev else 0.0)
                if prev is None:
                    t0 = t
                    prev = (t, a)
                    continue
                # every output time closer to the previous frame than to this one gets it
                mid = (prev[0] + t) / 2 - t0
                while k / fps < mid:
                    push(prev[1])
                    k += 1
                prev = (t, a)
            if fps is not None and prev is not None:
                end = prev[0] - t0
                while k / fps <= end + 1e-9 or k == 0:
                    push(prev[1])
                    k += 1
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"cannot decode video {path} ({type(e).__name__}: {e}). Replace or remove the file."
        ) from e
    if group:
        emit(np.stack(group))
    if count == 0:
        raise DataError(f"cannot use video {path}: no frame could be decoded from it")
    return count, rate, first_size


class _FrameFile:
    """Frames appended to a raw file; committed into the cache (atomic) or kept as a scratch
    file (unlinked at once on POSIX)."""

    def __init__(self, cache_dir: Path | None, key: str | None) -> None:
        self.cache_dir, self.key = cache_dir, key
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            self.tmp = cache_dir / f".{(key or '')[:16]}.{secrets.token_hex(4)}.frames.tmp"
            self.file = open(self.tmp, "xb")  # noqa: SIM115 - closed in commit / abort
        else:
            fd, name = tempfile.mkstemp(prefix="clusterfit-frames-")
            self.tmp = Path(name)
            self.file = os.fdopen(fd, "w+b")
            if os.name == "posix":
                self.tmp.unlink()
        self.hasher = hashlib.sha256()
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block).reshape(-1)
        self.file.write(data.tobytes())
        self.hasher.update(data)
        self.frames += len(block)

    def finish(self, shape: tuple[int, ...], meta: dict) -> np.ndarray:
        """Flush; in the cache rename into place (then the ``.json``); return the frames mapped."""
        self.file.flush()
        if self.cache_dir is None:
            return np.memmap(self.file, dtype=np.uint8, mode="c", shape=shape)
        self.file.close()
        raw, meta_path = _entry_paths(self.cache_dir, self.key or "")
        os.replace(self.tmp, raw)
        tmp_meta = self.cache_dir / f".{(self.key or '')[:16]}.{secrets.token_hex(4)}.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
        return np.memmap(raw, dtype=np.uint8, mode="c", shape=shape)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if self.cache_dir is not None:
            self.tmp.unlink(missing_ok=True)


def default_video_cache_dir() -> Path:
    """``$CLUSTERFIT_CACHE/videos`` when that is set, else ``~/.cache/clusterfit/videos``."""
    root = os.environ.get("CLUSTERFIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "clusterfit") / "videos"


def _entry_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.frames", cache_dir / f"{key}.json"


def video_cache_key(files: FileList, size: int, fps: float | None) -> str:
    """Hex sha256 of (relative path, byte size, mtime, label) per file, classes, size and fps."""
    entries = []
    for name, path, label in zip(files.names(), files.paths, files.labels.tolist(), strict=True):
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"cannot read video {path}: {e}") from e
        entries.append((name, st.st_size, st.st_mtime_ns, label))
    payload = {
        "version": VIDEO_CACHE_VERSION,
        "files": entries,
        "classes": files.classes,
        "size": size,
        "fps": fps,
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def _open_entry(cache_dir: Path, key: str) -> tuple[np.ndarray, dict] | None:
    raw, meta_path = _entry_paths(cache_dir, key)
    if not (raw.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(meta["shape"])
        if raw.stat().st_size != math.prod(shape):
            raise ValueError(f"{raw.stat().st_size} bytes for shape {shape}")
        frames = np.memmap(raw, dtype=np.uint8, mode="c", shape=shape)
    except Exception as e:
        warnings.warn(
            f"ignoring unreadable video cache entry {raw} ({e}); decoding again.", stacklevel=3
        )
        return None
    return frames, meta


def _decode_all(
    files: FileList, size: int, fps: float | None, cache_dir: Path | None, progress: bool
) -> tuple[np.ndarray, dict]:
    """(frames uint8 F x 3 x S x S memmap, meta with lengths, fingerprint and decode facts)."""
    key = video_cache_key(files, size, fps) if cache_dir is not None else None
    if cache_dir is not None and key is not None:
        hit = _open_entry(cache_dir, key)
        if hit is not None and len(hit[1]["lengths"]) == len(files.paths):
            return hit
    try:
        out = _FrameFile(cache_dir, key)
    except OSError as e:
        warnings.warn(f"could not write video cache in {cache_dir} ({e}); no cache.", stacklevel=3)
        cache_dir, key = None, None
        out = _FrameFile(None, None)
    lengths, rates, sizes = [], [], []
    try:
        bar = tqdm(files.paths, desc="decode videos", unit="video", disable=not progress)
        for path in bar:
            n, rate, wh = decode_video(path, size, fps, out.write)
            lengths.append(n)
            rates.append(rate)
            sizes.append(wh)
        bar.close()
        fingerprint = _sha256(
            "videos",
            json.dumps(files.names()),
            files.labels.tobytes(),
            json.dumps(files.classes),
            json.dumps([size, fps, lengths]),
            out.hasher.hexdigest(),
        )
        meta = {
            "shape": [out.frames, 3, size, size],
            "lengths": lengths,
            "fingerprint": fingerprint,
            "source": files.source,
            "frame_rates": sorted({round(r, 3) for r in rates if r}),
            "frame_sizes": sorted({f"{w}x{h}" for w, h in sizes}),
            "version": VIDEO_CACHE_VERSION,
        }
        frames = out.finish(tuple(meta["shape"]), meta)
    except BaseException:
        out.abort()
        raise
    return frames, meta


def load_videos(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    image_size: int | None = 64,
    crop_size: int | None = None,
    clip: VideoClipSettings | None = None,
    fps: float | None = None,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = True,
) -> VideoSet:
    """Load a folder of videos (class sub-folders, or unlabelled) or a CSV file list of videos.

    image_size: S, the side of the square frames that are decoded and cached (shorter side
        resized to S, centre crop). crop_size: C <= S, what the models see.
    clip: T, stride and clips per video (:class:`VideoClipSettings`). fps: resample every video to
        this frame rate (None: frames as decoded). limit: at most this many videos,
        class-balanced, chosen by ``seed``. cache_dir: as in :func:`clusterfit.data.load_images`
        (False: no cache, a scratch file deleted with the set).

    Raises DataError naming the file for an unreadable, empty or audio-only video (module
    docstring), and for a folder or CSV without videos.
    """
    clip = clip or VideoClipSettings()
    if image_size is None:
        raise DataError(
            "video frames are decoded at a square size: set data.image_size (e.g. 64; the paper's "
            "128) and data.crop_size (e.g. 56; the paper's 112)"
        )
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of items, got {limit!r}")
    path = Path(os.path.expanduser(os.fspath(source)))
    if not path.exists():
        raise DataError(f"dataset source {os.fspath(source)!r} not found: no such file or folder.")
    if path.is_dir():
        files = list_image_folder(path, split, extensions=VIDEO_EXTENSIONS, what="videos")
    else:
        files = read_csv(path, split)
    total = len(files.paths)
    if limit is not None and limit < total:
        files = files.take(balanced_indices(files.labels, int(limit), seed))
    if cache_dir is False:
        cdir = None
    elif cache_dir is None or cache_dir is True:
        cdir = default_video_cache_dir()
    else:
        cdir = Path(os.path.expanduser(os.fspath(cache_dir)))
    show = progress and distributed.is_main_process()
    if cdir is not None and distributed.is_distributed():
        if distributed.get_rank() == 0:
            try:
                frames, meta = _decode_all(files, int(image_size), fps, cdir, show)
            finally:
                distributed.barrier()
        else:
            distributed.barrier()
            frames, meta = _decode_all(files, int(image_size), fps, cdir, show)
    else:
        frames, meta = _decode_all(files, int(image_size), fps, cdir, show)
    lengths = np.asarray(meta["lengths"], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    looped = [
        files.names()[i] for i in np.flatnonzero(lengths < clip.span).tolist()
    ]  # shorter than one clip: looped
    summary = {
        "videos": len(lengths),
        "frames": int(lengths.sum()),
        "frames_per_video": [int(lengths.min()), int(lengths.max())],
        "clip": {"frames": clip.clip_frames, "stride": clip.frame_stride, "span": clip.span},
        "clips_per_video": clip.clips_per_video,
        "short_video_policy": "loop",
        "n_looped": len(looped),
        "looped": looped[:20],
        "frame_rates": meta.get("frame_rates", []),
        "fps": fps,
        "frame_sizes": meta.get("frame_sizes", []),
    }
    if looped:
        warnings.warn(
            f"{len(looped)} of {len(lengths)} videos of {files.source} are shorter than one clip "
            f"({clip.span} frames); their frames are looped (e.g. {looped[0]})",
            stacklevel=2,
        )
    desc = files.source
    if len(files.paths) < total:
        desc += f" ({len(files.paths)} of {total}, balanced, seed {seed})"
    fingerprint = _sha256(
        meta["fingerprint"],
        json.dumps([clip.clip_frames, clip.frame_stride, clip.clips_per_video, crop_size]),
    )
    return VideoSet(
        frames=as_tensor(frames),
        starts=starts,
        lengths=lengths,
        labels=files.labels,
        classes=files.classes,
        source=desc,
        fingerprint=fingerprint,
        crop_size=crop_size,
        clip=clip,
        summary=summary,
    )
