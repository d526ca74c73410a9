"""Datasets (:class:`ImageSet`, memory-mapped from the decoded cache), their loading, and batched
augmentation."""

from clusterfit.data.bundled import BUNDLED_NAMES
from clusterfit.data.folders import IMAGE_EXTENSIONS
from clusterfit.data.images import ImageRows, ImageSet, balanced_indices, load_images
from clusterfit.data.transforms import (
    BatchAugment,
    ColorJitterBatch,
    RandomResizedCropBatch,
    center_crop,
    channel_stats,
    to_float,
)

__all__ = [
    "BUNDLED_NAMES",
    "IMAGE_EXTENSIONS",
    "BatchAugment",
    "ColorJitterBatch",
    "ImageRows",
    "ImageSet",
    "RandomResizedCropBatch",
    "balanced_indices",
    "center_crop",
    "channel_stats",
    "load_images",
    "to_float",
]
