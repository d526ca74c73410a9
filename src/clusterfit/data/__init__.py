"""Datasets (:class:`ImageSet`, memory-mapped from the decoded cache), their loading, and batched
augmentation."""

from clusterfit.data.bundled import BUNDLED_NAMES
from clusterfit.data.folders import IMAGE_EXTENSIONS
from clusterfit.data.images import ImageRows, ImageSet, balanced_indices, load_images
from clusterfit.data.sources import load_dataset
from clusterfit.data.transforms import (
    BatchAugment,
    ClipCropFlip,
    ColorJitterBatch,
    RandomResizedCropBatch,
    center_crop,
    channel_stats,
    to_float,
)
from clusterfit.data.video import (
    VIDEO_EXTENSIONS,
    VideoClipSettings,
    VideoSet,
    is_video_source,
    load_videos,
)

__all__ = [
    "BUNDLED_NAMES",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "BatchAugment",
    "ClipCropFlip",
    "ColorJitterBatch",
    "ImageRows",
    "ImageSet",
    "RandomResizedCropBatch",
    "VideoClipSettings",
    "VideoSet",
    "balanced_indices",
    "center_crop",
    "channel_stats",
    "is_video_source",
    "load_dataset",
    "load_images",
    "load_videos",
    "to_float",
]
