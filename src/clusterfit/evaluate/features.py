"""Per-layer feature pooling for the transfer probes.

ClusterFit (Yan et al., CVPR 2020), Sec. 4 and App. D, following Goyal et al. (ICCV 2019): the
feature map of every probed layer (conv1, res2 .. res5) is average-pooled to "about 9k"
dimensions before a linear classifier is trained on it, so that layers of very different
widths are compared at a similar feature size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError

__all__ = ["pool_to_dims", "pooled_size"]


def pooled_size(channels: int, height: int, width: int, max_dims: int = 9216) -> int:
    """Side ``s`` of the square grid that :func:`pool_to_dims` pools a C x H x W map to.

    ``s`` is the largest integer with ``channels * s * s <= max_dims``, capped at
    ``min(height, width)`` (pooling to a grid finer than the map would only repeat values and
    inflate the stored features), and never below 1. When ``channels > max_dims`` the result is
    1 and the pooled feature has ``channels`` (> ``max_dims``) dimensions.
    """
    if channels < 1 or height < 1 or width < 1:
        raise ClusterFitError(
            f"pooled_size: feature map of shape C={channels}, H={height}, W={width} is empty; "
            "pass a map with positive channel and spatial sizes"
        )
    if max_dims < 1:
        raise ClusterFitError(f"pooled_size: max_dims={max_dims} must be a positive integer")
    s = math.isqrt(max_dims // channels)
    return max(1, min(s, height, width))


def pool_to_dims(fmap: torch.Tensor, max_dims: int = 9216) -> torch.Tensor:
    """Average-pool a feature map to at most ``max_dims`` dimensions and flatten it.

    Args:
        fmap: B x C x H x W feature map (any floating dtype, any device), or a video map
            B x C x T x H x W, which is averaged over T first. A B x D tensor (an already pooled
            feature, e.g. the "pool" layer) is returned unchanged.
        max_dims: the target dimension (the paper's "about 9k": 9216 = 2048 * 2 * 2 for res5 of
            a ResNet-50, 256 * 6 * 6 for res2, 64 * 12 * 12 for conv1).

    Returns:
        B x (C * s * s) tensor, channel-major (the flattening of B x C x s x s), where
        ``s = pooled_size(C, H, W, max_dims)``: ``adaptive_avg_pool2d`` to an s x s grid, i.e.
        each output cell is the mean over its block of input positions.
    """
    if fmap.dim() == 2:
        return fmap
    if fmap.dim() == 5:  # video B x C x T x H x W: averaged over time first (paper §4.1.2)
        fmap = fmap.mean(dim=2)
    if fmap.dim() != 4:
        raise ClusterFitError(
            f"pool_to_dims: expected a B x C x H x W feature map, got shape {tuple(fmap.shape)}"
        )
    _, c, h, w = fmap.shape
    s = pooled_size(c, h, w, max_dims)
    pooled = fmap if (h, w) == (s, s) else F.adaptive_avg_pool2d(fmap, s)
    return pooled.flatten(1)
