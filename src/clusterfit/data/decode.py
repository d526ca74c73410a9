"""Decoding image files into one uint8 array, in parallel.

Every image is decoded with PIL. One colour mode per dataset: ``L`` (1 channel) when every image
is mode ``L`` or ``1``, else ``RGB`` (3 channels; greyscale images are replicated, alpha is
dropped, palettes are expanded). With ``size = (h, w)`` each image is resized so that it covers
``h x w`` (for a square size: its shorter side becomes ``h``), bilinear with antialiasing, then
centre-cropped to ``h x w``; JPEGs are first decoded at a reduced scale where that still leaves at
least the covering size (PIL's ``draft``). Without ``size`` all images must have the same size.

Large lists are decoded by ``torch.utils.data.DataLoader`` worker processes (decoding small images
is bound by Python overhead, so threads do not help), in chunks of :data:`CHUNK` files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clusterfit.errors import DataError

CHUNK = 256
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


def decode_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one file: uint8 H x W for greyscale (mode L/1) images, H x W x 3 otherwise.

    Raises whatever PIL raises for an unreadable file; :func:`decode_files` turns that into a
    DataError naming the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
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


def decode_files(
    paths: Sequence[str | Path],
    size: tuple[int, int] | None = None,
    *,
    progress: bool = True,
    num_workers: int | None = None,
    chunk: int = CHUNK,
) -> np.ndarray:
    """Decode ``paths`` into one array (mode and resizing as in the module docstring).

    paths: image files, in item order. size: (h, w) or None (all images must then agree).
    num_workers: DataLoader worker processes; None = :func:`default_workers`.
    Returns uint8 N x C x H x W (C = 1 or 3), C-contiguous, row i = paths[i].
    Raises DataError naming an unreadable file, or two files of different sizes.
    """
    if not paths:
        raise DataError("no image files to decode.")
    str_paths = [str(p) for p in paths]
    workers = default_workers(len(str_paths)) if num_workers is None else num_workers
    dataset = _Chunks(str_paths, size, chunk)
    if workers > 0:
        results = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            collate_fn=_identity,
            prefetch_factor=4,
        )
    else:
        results = (dataset[i] for i in range(len(dataset)))

    parts: list[np.ndarray] = []
    first: tuple[str, tuple] | None = None
    with tqdm(total=len(str_paths), desc="decode images", unit="img", disable=not progress) as bar:
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
            parts.append(arr)
            bar.update(len(arr))

    rgb = any(a.ndim == 4 for a in parts)
    h, w = parts[0].shape[1:3]
    out = np.empty((len(str_paths), 3 if rgb else 1, h, w), dtype=np.uint8)
    i = 0
    for a in parts:
        out[i : i + len(a)] = a.transpose(0, 3, 1, 2) if a.ndim == 4 else a[:, None]
        i += len(a)
    return out
