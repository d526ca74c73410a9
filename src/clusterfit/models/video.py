"""R(2+1)D video networks (Tran et al., CVPR 2018) for video ClusterFit (paper §4.1.2, Table 5).

The paper's N_pre and N_cf on video are R(2+1)D-34 / -18 networks on clips of 32 frames at 112 x
112. ``r2plus1d_18`` (torchvision's, registered in :mod:`clusterfit.models.registry`) is that
family at full width; ``r2plus1d_narrow`` below is the same design with a chosen ``width`` (channels
of the first stage, doubled at each of the next three) and ``depth`` (blocks per stage), small
enough to train on a CPU. Input B x C x T x H x W; layers ``conv1`` (the stem), ``res2`` ..
``res5`` (the four stages, the last three halving T, H and W), ``pool`` (global average over
T, H, W).

Each 3-D convolution is factorised into a spatial ``1 x 3 x 3`` convolution, BatchNorm, ReLU and a
temporal ``3 x 1 x 1`` one, with the middle channels chosen (as in the paper of R(2+1)D) so that
the pair has about as many weights as the full ``3 x 3 x 3`` convolution it replaces.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models.backbone import Backbone
from clusterfit.models.registry import register_model


def _mid(c_in: int, c_out: int) -> int:
    """Middle channels of a (2+1)D pair with the weights of a 3x3x3 convolution."""
    return max(1, (3 * 3 * 3 * c_in * c_out) // (3 * 3 * c_in + 3 * c_out))


class Conv2Plus1D(nn.Sequential):
    """``1 x 3 x 3`` spatial conv (stride s in H, W) -> BN -> ReLU -> ``3 x 1 x 1`` temporal conv
    (stride s in T). B x c_in x T x H x W -> B x c_out x T/s x H/s x W/s."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        mid = _mid(c_in, c_out)
        super().__init__(
            nn.Conv3d(c_in, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class Block2Plus1D(nn.Module):
    """Basic residual block of two (2+1)D convolutions, with a 1x1x1 projection shortcut when the
    shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1D(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = Conv2Plus1D(c_out, c_out)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm3d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def r2plus1d_trunk(in_chans: int = 3, width: int = 16, depth: int = 1) -> nn.Sequential:
    """The trunk: stem (``1 x 7 x 7`` stride 2 in space, then ``3 x 1 x 1``), then four stages of
    ``depth`` blocks with ``width``, 2, 4, 8 x ``width`` channels (stride 1, 2, 2, 2).
    B x in_chans x T x H x W -> B x 8*width x T/8 x H/16 x W/16 (rounded up)."""
    if width < 1 or depth < 1:
        raise ClusterFitError(
            f"r2plus1d_narrow needs width >= 1 and depth >= 1, got {width}, {depth}"
        )
    mid = _mid(in_chans, width)
    stem = nn.Sequential(
        nn.Conv3d(in_chans, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), 1, (1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )
    stages: list[tuple[str, nn.Module]] = [("stem", stem)]
    c = width
    for i, mult in enumerate((1, 2, 4, 8)):
        out = width * mult
        blocks = [
            Block2Plus1D(c if j == 0 else out, out, 1 if (i == 0 or j) else 2) for j in range(depth)
        ]
        stages.append((f"layer{i + 1}", nn.Sequential(*blocks)))
        c = out
    trunk = nn.Sequential(OrderedDict(stages))
    for m in trunk.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk


@register_model("r2plus1d_narrow")
def _build_r2plus1d_narrow(
    in_chans: int = 3, pretrained: bool = False, width: int = 16, depth: int = 1
) -> Backbone:
    """R(2+1)D of ``width`` (first-stage channels) and ``depth`` (blocks per stage); no
    pre-trained weights (train it, or load a checkpoint)."""
    if pretrained:
        raise ClusterFitError(
            "r2plus1d_narrow has no pre-trained weights; train it, or use r2plus1d_18"
        )
    trunk = r2plus1d_trunk(in_chans, width, depth)
    layers = {"conv1": "stem", "res2": "layer1", "res3": "layer2", "res4": "layer3"}
    layers["res5"] = "layer4"
    return Backbone(trunk, 8 * width, layers, in_chans=in_chans, spatial_dims=3)
