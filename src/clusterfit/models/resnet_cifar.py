"""A small CIFAR-style ResNet with the four residual stages of the paper's layer names.

ClusterFit (Yan et al., CVPR 2020) probes the frozen features of ``conv1`` and of the outputs of
the residual stages ``res2`` .. ``res5`` (Sec. 4, Fig. 3 / Table 2). The usual CIFAR ResNets have
only three stages; this one keeps four so every name exists on 28-32 px images:

==========  ==========================================  ===========  ============
name        module                                      channels     spatial (32)
==========  ==========================================  ===========  ============
conv1       3x3 conv, stride 1, BN, ReLU (no max-pool)  w            32 x 32
res2        BasicBlocks, stride 1                       w            32 x 32
res3        BasicBlocks, first stride 2                 2w           16 x 16
res4        BasicBlocks, first stride 2                 4w           8 x 8
res5        BasicBlocks, first stride 2                 8w           4 x 4
==========  ==========================================  ===========  ============

The trunk is an ``nn.Sequential`` whose children carry exactly these names, so torchvision's FX
feature extraction finds them by name. Its output is the ``res5`` map, B x 8w x h x w
(``feature_dim = 8 * width``; 128 for the default width 16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from clusterfit.errors import ClusterFitError

#: Blocks per stage for each supported depth (2 convolutions per BasicBlock, plus stem and head).
DEPTHS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut.

    Input B x ``in_planes`` x H x W, output B x ``planes`` x H/stride x W/stride.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Sequential):
    """CIFAR-style ResNet trunk: ``conv1`` -> ``res2`` -> ``res3`` -> ``res4`` -> ``res5``.

    Args:
        depth: 10 (one BasicBlock per stage), 18 (two) or 34 (3, 4, 6, 3).
        width: channels of ``conv1``/``res2``; the stages have ``w, 2w, 4w, 8w`` channels.
        in_chans: input channels (1 for grey images, 3 for colour).

    ``forward(x)``: x B x in_chans x H x W (normalised) -> B x 8w x H/8 x W/8.
    Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain); BatchNorm starts at
    weight 1, bias 0.
    """

    def __init__(self, depth: int = 18, width: int = 16, in_chans: int = 3) -> None:
        if depth not in DEPTHS:
            raise ClusterFitError(
                f"resnet_cifar: depth={depth!r} is not supported; use one of {sorted(DEPTHS)}"
            )
        if not isinstance(width, int) or width < 1:
            raise ClusterFitError(f"resnet_cifar: width must be a positive int, got {width!r}")
        if in_chans < 1:
            raise ClusterFitError(f"resnet_cifar: in_chans must be >= 1, got {in_chans!r}")
        blocks = DEPTHS[depth]
        widths = (width, 2 * width, 4 * width, 8 * width)
        strides = (1, 2, 2, 2)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        in_planes = width
        for i, (n, planes, stride) in enumerate(zip(blocks, widths, strides, strict=True)):
            stage = [BasicBlock(in_planes, planes, stride)]
            stage += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            layers[f"res{i + 2}"] = nn.Sequential(*stage)
            in_planes = planes
        super().__init__(layers)
        self.depth = depth
        self.width = width
        self.feature_dim = widths[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
