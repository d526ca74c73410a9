"""One entry point for every kind of dataset source: :func:`load_dataset`.

A source is an image folder / CSV (decoded into an :class:`~clusterfit.data.ImageSet`), a folder or
CSV of video files (decoded into a :class:`~clusterfit.data.video.VideoSet`, paper §4.1.2), or the
bundled set. Videos are recognised by their file extensions
(:data:`~clusterfit.data.video.VIDEO_EXTENSIONS`).
"""

from __future__ import annotations

import os

from clusterfit.data.bundled import is_bundled
from clusterfit.data.images import ImageSet, load_images
from clusterfit.data.video import VideoClipSettings, VideoSet, is_video_source, load_videos


def load_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    image_size: int | None = None,
    crop_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    clip: VideoClipSettings | None = None,
    fps: float | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
) -> ImageSet | VideoSet:
    """:func:`~clusterfit.data.video.load_videos` for a source of video files, else
    :func:`~clusterfit.data.load_images` (``clip`` and ``fps`` are for videos only)."""
    common = {"crop_size": crop_size, "limit": limit, "seed": seed, "progress": progress}
    if not is_bundled(source) and is_video_source(source, split):
        return load_videos(
            source, split, image_size=image_size, clip=clip, fps=fps, cache_dir=cache_dir, **common
        )
    return load_images(source, split, image_size=image_size, cache_dir=cache_dir, **common)
