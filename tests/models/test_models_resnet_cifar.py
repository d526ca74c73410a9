"""resnet_cifar: structure against hand counts and against torchvision's ResNet-18 stages."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from clusterfit.errors import ClusterFitError
from clusterfit.models import ResNetCifar, count_parameters, create_model


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def bn(c: int) -> int:
    return 2 * c


def block(cin: int, cout: int, stride: int) -> int:
    n = conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
    if stride != 1 or cin != cout:
        n += conv(cin, cout, 1) + bn(cout)
    return n


@pytest.mark.parametrize(("depth", "width", "in_chans"), [(10, 16, 1), (18, 16, 3), (18, 32, 3)])
def test_parameter_count_by_hand(depth: int, width: int, in_chans: int) -> None:
    per_stage = {10: 1, 18: 2}[depth]
    total = conv(in_chans, width, 3) + bn(width)
    cin = width
    for i, stride in enumerate([1, 2, 2, 2]):
        cout = width * 2**i
        total += block(cin, cout, stride) + (per_stage - 1) * block(cout, cout, 1)
        cin = cout
    assert count_parameters(ResNetCifar(depth, width, in_chans)) == total


def test_stages_match_torchvision_resnet18() -> None:
    ours = ResNetCifar(depth=18, width=64)
    ref = torchvision.models.resnet18()
    for mine, theirs in zip(
        ["res2", "res3", "res4", "res5"], ["layer1", "layer2", "layer3", "layer4"], strict=True
    ):
        a = [tuple(p.shape) for p in getattr(ours, mine).parameters()]
        b = [tuple(p.shape) for p in getattr(ref, theirs).parameters()]
        assert sorted(a) == sorted(b), mine


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    trunk = ResNetCifar(depth=10, width=16)
    w = trunk.res5[0].conv2.weight  # 128 x 128 x 3 x 3
    fan_out = w.shape[0] * 9
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    assert abs(w.mean().item()) < 0.01
    bn1 = trunk.res5[0].bn1
    assert torch.all(bn1.weight == 1) and torch.all(bn1.bias == 0)


def test_default_feature_dim_and_stride() -> None:
    net = create_model("resnet_cifar", [10], depth=10)
    assert net.feature_dim == 128
    assert net.model_args["arch_kwargs"] == {"depth": 10}
    net.eval()
    out = net.intermediates(torch.rand(1, 3, 32, 32), ["conv1", "res5"])
    assert tuple(out["conv1"].shape) == (1, 16, 32, 32)  # stride 1, no max-pool
    assert tuple(out["res5"].shape) == (1, 128, 4, 4)


def test_learns_a_toy_problem() -> None:
    """A few SGD steps separate two trivially different image classes."""
    torch.manual_seed(0)
    net = create_model("resnet_cifar", [2], depth=10, width=4, in_chans=1)
    x = torch.rand(32, 1, 16, 16) * 0.5
    y = torch.arange(32) % 2
    x[y == 1, :, :8] += 0.5  # class 1: bright top half
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x)[0].argmax(1) == y).float().mean().item()
    assert acc == 1.0


def test_bad_depth_and_width() -> None:
    with pytest.raises(ClusterFitError, match="depth=50"):
        ResNetCifar(depth=50)
    with pytest.raises(ClusterFitError, match="width"):
        ResNetCifar(width=0)
