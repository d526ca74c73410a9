"""Decoding image files into one uint8 array, in parallel, chunk by chunk.

JPEGs in mode ``L`` or ``RGB`` that are not shrunk on decoding are decoded by
``torchvision.io.decode_jpeg`` (the same libjpeg-turbo and the same pixels as PIL, about 2x faster
on small images); every other file (PNG, BMP, WebP, GIF, TIFF, CMYK JPEGs, JPEGs that PIL's
``draft`` decodes at a reduced scale) is decoded with PIL. One colour mode per dataset: ``L``
(1 channel) when every image is mode ``L`` or ``1``, else ``RGB`` (3 channels; greyscale images are
replicated, alpha is dropped, palettes are expanded). With ``size = (h, w)`` each image is resized
so that it covers ``h x w`` (for a square size: its shorter side becomes ``h``), bilinear with
antialiasing, then centre-cropped to ``h x w``; JPEGs are first decoded at a reduced scale where
that still leaves at least the covering size (PIL's ``draft``). Without ``size`` all images must
have the same size.

Large lists are decoded by ``torch.utils.data.DataLoader`` worker processes (decoding small images
is bound by Python overhead, so threads do not help), in chunks of :data:`CHUNK` files (fewer for
large output sizes, so a chunk stays near :data:`CHUNK_BYTES`). :func:`decode_into` writes each
chunk straight into an output array as it arrives (a memory map, for the cache) and hashes it, so
the memory in use while decoding does not grow with the number of files.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clusterfit.errors import DataError

CHUNK = 256
#: a decoded chunk holds about this many bytes at most (at least 16 files)
CHUNK_BYTES = 16 << 20
#: lists shorter than this are decoded in-process (starting workers costs about a second)
MIN_FILES_FOR_WORKERS = 2000
GREY_MODES = ("L", "1")


def cover_size(width: int, height: int, out_h: int, out_w: int) -> tuple[int, int]:
    """(new_w, new_h): the smallest scaling of ``width x height`` that covers ``out_w x out_h``."""
    scale = max(out_w / width, out_h / height)
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def resize_cover(img: Image.Image, out_h: int, out_w: int) -> Image.Image:
    """Resize ``img`` to cover ``out_h x out_w`` (bilinear, antialiased), then centre-crop to it."""
    if img.size == (out_w, out_h):
        return img
    new_w, new_h = cover_size(img.width, img.height, out_h, out_w)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    if (new_w, new_h) != (out_w, out_h):
        img = img.crop((left, top, left + out_w, top + out_h))
    return img


def resize_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize-cover + centre-crop a stack of images, like :func:`resize_cover`.

    images: uint8 N x H x W (greyscale) or N x H x W x 3. Returns N x h x w (x 3) uint8.
    """
    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((images.shape[0], h, w, *images.shape[3:]), dtype=np.uint8)
    for i, a in enumerate(images):
        out[i] = np.asarray(resize_cover(Image.fromarray(a), h, w))
    return out


def _draft_scale(width: int, height: int, size: tuple[int, int]) -> int:
    """The reduction (1, 2, 4 or 8) that PIL's JPEG ``draft`` picks to cover ``size``."""
    cover_w, cover_h = cover_size(width, height, *size)
    scale = min(width // cover_w, height // cover_h)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _torchvision_jpeg() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # torchvision is optional: PIL decodes everything
        return None

    def decode(data: torch.Tensor) -> torch.Tensor:
        # torchvision >= 0.29 warns on every call that its decoders will move to torchcodec;
        # PIL takes over when they are gone (the import above fails)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.UNCHANGED)

    return decode


_TV_DECODE: list = []  # [decoder or None], resolved on first use (in each worker)


def decode_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one file: uint8 H x W for greyscale (mode L/1) images, H x W x 3 otherwise.

    Raises whatever PIL or torchvision raise for an unreadable file; :func:`decode_files` turns
    that into a DataError naming the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        if (
            img.format == "JPEG"
            and img.mode in ("L", "RGB")
            and (size is None or _draft_scale(img.width, img.height, size) == 1)
        ):
            if not _TV_DECODE:
                _TV_DECODE.append(_torchvision_jpeg())
            if _TV_DECODE[0] is not None:
                chw = _TV_DECODE[0](torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
                if chw.shape[0] != (1 if img.mode == "L" else 3):
                    raise OSError(f"decoded {chw.shape[0]} channels from a {img.mode} JPEG")
                arr = chw[0] if img.mode == "L" else chw.transpose(1, 2, 0)
                if size is not None and arr.shape[:2] != size:
                    arr = np.asarray(resize_cover(Image.fromarray(arr), *size))
                return arr
        if size is not None and img.format == "JPEG":
            img.draft(img.mode, cover_size(img.width, img.height, *size))
        target = "L" if img.mode in GREY_MODES else "RGB"
        if img.mode == target:
            img.load()  # convert() would copy; an image already in the target mode needs none
        else:
            img = img.convert(target)
        if size is not None:
            img = resize_cover(img, *size)
        return np.asarray(img)


class _Chunks(torch.utils.data.Dataset):
    """Item i = the decoded chunk i of ``paths`` (a tuple describing the result or the error)."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int] | None, chunk: int) -> None:
        self.paths = list(paths)
        self.size = size
        self.chunk = chunk

    def __len__(self) -> int:
        return (len(self.paths) + self.chunk - 1) // self.chunk

    def __getitem__(self, i: int) -> tuple:
        paths = self.paths[i * self.chunk : (i + 1) * self.chunk]
        arrays = []
        for p in paths:
            try:
                arrays.append(decode_image(p, self.size))
            except Exception as e:
                return ("bad", p, f"{type(e).__name__}: {e}")
        hw = arrays[0].shape[:2]
        for p, a in zip(paths, arrays, strict=True):
            if a.shape[:2] != hw:
                return ("size", paths[0], hw, p, a.shape[:2])
        if any(a.ndim == 3 for a in arrays):
            arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        return ("ok", paths[0], np.stack(arrays))


def _identity(x: tuple) -> tuple:
    return x


def default_workers(n_files: int) -> int:
    """Decode workers: ``CLUSTERFIT_DECODE_WORKERS`` if set, else 0 (in-process) for short lists,
    else the number of usable CPU cores (at most 8)."""
    env = os.environ.get("CLUSTERFIT_DECODE_WORKERS")
    if env:
        return max(0, int(env))
    if n_files < MIN_FILES_FOR_WORKERS:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return min(cores, 8) if cores > 1 else 0


def _size_error(path_a: str, hw_a: tuple, path_b: str, hw_b: tuple) -> DataError:
    return DataError(
        f"images differ in size: {path_a} is {hw_a[1]}x{hw_a[0]} (WxH) but {path_b} is "
        f"{hw_b[1]}x{hw_b[0]}. Pass image_size (e.g. image_size={min(*hw_a, *hw_b)}) to resize "
        "every image to one size."
    )


Allocate = Callable[[tuple[int, int, int, int]], np.ndarray]


def _in_memory(shape: tuple[int, int, int, int]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


def chunk_for(size: tuple[int, int] | None, chunk: int | None = None) -> int:
    """Files per chunk: ``chunk`` (default :data:`CHUNK`), fewer when ``size`` makes a chunk
    exceed :data:`CHUNK_BYTES`."""
    chunk = CHUNK if chunk is None else chunk
    if size is None:
        return chunk
    return max(16, min(chunk, CHUNK_BYTES // (3 * size[0] * size[1])))


def decode_into(
    paths: Sequence[str | Path],
    size: tuple[int, int] | None,
    allocate: Allocate = _in_memory,
    *,
    progress: bool = True,
    num_workers: int | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, str]:
    """Decode ``paths`` chunk by chunk into an array from ``allocate``, hashing as it goes.

    allocate: ``shape (N, C, H, W) -> writable uint8 array`` (``np.empty`` by default; a memory
        map for the cache). Called once with the first chunk's shape, and once more with C = 3 if
        a colour chunk follows greyscale ones (the rows so far are then copied over, widened).
    Returns (images uint8 N x C x H x W, C-contiguous, row i = paths[i]; hex sha256 of its bytes,
    i.e. ``hashlib.sha256(images.tobytes())`` computed one chunk at a time).
    Peak memory besides the output: a few chunks per worker. Raises DataError naming an
    unreadable file, or two files of different sizes.
    """
    if not paths:
        raise DataError("no image files to decode.")
    str_paths = [str(p) for p in paths]
    workers = default_workers(len(str_paths)) if num_workers is None else num_workers
    dataset = _Chunks(str_paths, size, chunk or chunk_for(size))
    if workers > 0:
        results = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            collate_fn=_identity,
            prefetch_factor=2,
        )
    else:
        results = (dataset[i] for i in range(len(dataset)))

    n = len(str_paths)
    out: np.ndarray | None = None
    hasher = hashlib.sha256()
    first: tuple[str, tuple] | None = None
    i = 0
    with tqdm(total=n, desc="decode images", unit="img", disable=not progress) as bar:
        for res in results:
            if res[0] == "bad":
                raise DataError(
                    f"cannot decode image {res[1]} ({res[2]}). Replace or remove the file."
                )
            if res[0] == "size":
                raise _size_error(*res[1:])
            _, path0, arr = res
            if first is None:
                first = (path0, arr.shape[1:3])
            elif arr.shape[1:3] != first[1]:
                raise _size_error(first[0], first[1], path0, arr.shape[1:3])
            h, w = arr.shape[1:3]
            channels = 3 if arr.ndim == 4 else 1
            if out is None:
                out = allocate((n, channels, h, w))
            elif channels == 3 and out.shape[1] == 1:
                out, hasher = _widen(out, i, allocate)
            block = out[i : i + len(arr)]
            # a greyscale chunk broadcasts over the channels of an RGB output
            block[:] = arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr[:, None]
            hasher.update(block.reshape(-1))
            i += len(arr)
            bar.update(len(arr))
    assert out is not None and i == n
    return out, hasher.hexdigest()


def _widen(grey: np.ndarray, rows: int, allocate: Allocate) -> tuple[np.ndarray, hashlib._Hash]:
    """A new N x 3 x H x W array from ``allocate`` whose first ``rows`` rows are ``grey``'s,
    replicated to three channels, and a hasher fed with those rows."""
    out = allocate((grey.shape[0], 3, *grey.shape[2:]))
    hasher = hashlib.sha256()
    step = max(1, CHUNK_BYTES // max(1, 3 * grey.shape[2] * grey.shape[3]))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        out[a:b] = grey[a:b]  # broadcasts 1 -> 3 channels
        hasher.update(out[a:b].reshape(-1))
    return out, hasher


def decode_files(
    paths: Sequence[str | Path],
    size: tuple[int, int] | None = None,
    *,
    progress: bool = True,
    num_workers: int | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Decode ``paths`` into one in-memory array (mode and resizing as in the module docstring).

    paths: image files, in item order. size: (h, w) or None (all images must then agree).
    num_workers: DataLoader worker processes; None = :func:`default_workers`.
    Returns uint8 N x C x H x W (C = 1 or 3), C-contiguous, row i = paths[i].
    Raises DataError naming an unreadable file, or two files of different sizes.
    """
    images, _ = decode_into(
        paths, size, _in_memory, progress=progress, num_workers=num_workers, chunk=chunk
    )
    return images
