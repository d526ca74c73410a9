"""Small synthetic videos (moving squares of two classes), written with PyAV's own encoder.

For tests and benchmarks of the video path (paper §4.1.2) where no real clips are at hand: class
``horizontal`` holds a square moving left to right, class ``vertical`` one moving top to bottom;
the square's colour, size and start are drawn per video.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clusterfit.data.video import _import_av

CLASSES = ("horizontal", "vertical")


def moving_square(
    label: int, frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 frames x height x width x 3: a square moving right (label 0) or down (label 1)."""
    out = np.full((frames, height, width, 3), 16, dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    colour = rng.integers(96, 256, size=3).astype(np.uint8)
    fixed = int(rng.integers(0, min(height, width) - side + 1))
    for t in range(frames):
        pos = round(t * (((width if label == 0 else height) - side) / max(1, frames - 1)))
        y, x = (fixed, pos) if label == 0 else (pos, fixed)
        out[t, y : y + side, x : x + side] = colour
    return out


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 15,
    codec: str = "mpeg4",
    audio: bool = False,
) -> Path:
    """Encode uint8 frames (n x H x W x 3, H and W even) into ``path`` with PyAV (``mpeg4`` needs
    no external encoder). ``audio=True`` adds a short silent audio stream."""
    av = _import_av()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        if audio:
            container.add_stream("aac", rate=8000)
        for a in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: str | os.PathLike, seconds: float = 0.5) -> Path:
    """A file with one silent audio stream and no video stream (for the bad-input checks)."""
    av = _import_av()
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        n = int(seconds * 8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, n), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_video_folder(
    folder: str | os.PathLike,
    per_class: int,
    frames: int = 12,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
    fps: int = 15,
) -> Path:
    """``folder/<class>/<class>_<i>.mp4``: ``per_class`` videos of each of :data:`CLASSES`,
    ``frames`` frames of ``size`` (height, width) each."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            clip = moving_square(label, frames, size[0], size[1], rng)
            write_video(folder / name / f"{name}_{i:03d}.mp4", clip, fps=fps)
    return folder
