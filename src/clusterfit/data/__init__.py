"""Datasets in memory (:class:`ImageSet`), their loading, and batched augmentation."""

from clusterfit.data.bundled import BUNDLED_NAMES
from clusterfit.data.folders import IMAGE_EXTENSIONS
from clusterfit.data.images import ImageSet, balanced_indices, load_images
from clusterfit.data.transforms import (
    BatchAugment,
    RandomResizedCropBatch,
    channel_stats,
    to_float,
)

__all__ = [
    "BUNDLED_NAMES",
    "IMAGE_EXTENSIONS",
    "BatchAugment",
    "ImageSet",
    "RandomResizedCropBatch",
    "balanced_indices",
    "channel_stats",
    "load_images",
    "to_float",
]
