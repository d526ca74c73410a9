"""pool_to_dims: output size and values against hand-computed block means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterfit.errors import ClusterFitError
from clusterfit.evaluate.features import pool_to_dims, pooled_size


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("c", "h", "w", "s"),
    [
        (64, 56, 56, 12),  # conv1 of a ResNet-50: 64 * 12 * 12 = 9216
        (256, 56, 56, 6),  # res2: 9216
        (512, 28, 28, 4),  # res3: 8192
        (1024, 14, 14, 3),  # res4: 9216
        (2048, 7, 7, 2),  # res5: 8192
        (4, 2, 3, 2),  # capped at the map size
        (10000, 4, 4, 1),  # wider than max_dims: global average pool
    ],
)
def test_pooled_size(c, h, w, s):
    assert pooled_size(c, h, w) == s
    assert pool_to_dims(torch.zeros(2, c, h, w)).shape == (2, c * s * s)


def test_values_are_block_means():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = pool_to_dims(x, max_dims=3 * 3 * 3)  # s = 3: 2 x 2 blocks
    # Split each 6 x 6 map into 3 x 3 blocks of 2 x 2 and average within the blocks.
    expected = x.reshape(2, 3, 3, 2, 3, 2).sum(dim=(3, 5)) / 4
    close(out, expected.reshape(2, 27))
    # Channel-major flattening: the first s*s entries belong to channel 0.
    assert out[0, 0].item() == (0 + 1 + 6 + 7) / 4
    assert out[1, 26].item() == x[1, 2, 4:6, 4:6].mean().item()


def test_uneven_bins_overlap_like_adaptive_pooling():
    # 7 -> 2 cells: rows [0, 4) and [3, 7) (floor(i*7/2) .. ceil((i+1)*7/2)).
    x = torch.rand(1, 2048, 7, 7)
    out = pool_to_dims(x).reshape(1, 2048, 2, 2)
    close(out[0, :, 0, 1], x[0, :, 0:4, 3:7].mean(dim=(1, 2)))
    close(out[0, :, 1, 0], x[0, :, 3:7, 0:4].mean(dim=(1, 2)))


def test_global_pool_and_passthrough():
    x = torch.rand(3, 16, 5, 5)
    close(pool_to_dims(x, max_dims=20), x.mean(dim=(2, 3)))
    flat = torch.rand(3, 7)
    assert pool_to_dims(flat) is flat
    with pytest.raises(ClusterFitError, match="B x C x H x W"):
        pool_to_dims(torch.rand(3, 4, 5))
