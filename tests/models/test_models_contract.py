"""Contract test over every registered architecture: each answers the same few calls."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from clusterfit.models import (
    CANONICAL_LAYERS,
    build_from_args,
    create_model,
    list_models,
    load_model,
    save_checkpoint,
)

HEADS = [3, 5]
# arch -> (arch_kwargs, input shape, device). Small inputs. The large torchvision ResNets share
# their builder with resnet18; they are checked on the "meta" device (shapes only, no compute),
# which keeps the suite fast.
CASES: dict[str, tuple[dict, tuple[int, ...], str]] = {
    "resnet_cifar": ({"depth": 10, "width": 8}, (2, 3, 32, 32), "cpu"),
    "resnet18": ({}, (2, 3, 32, 32), "cpu"),
    "resnet34": ({}, (2, 3, 32, 32), "meta"),
    "resnet50": ({}, (2, 3, 32, 32), "meta"),
    "resnet101": ({}, (2, 3, 32, 32), "meta"),
    "resnet152": ({}, (2, 3, 32, 32), "meta"),
    "r2plus1d_18": ({}, (1, 3, 4, 32, 32), "cpu"),
    "r2plus1d_narrow": ({"width": 4, "depth": 1}, (2, 3, 4, 32, 32), "cpu"),
    "efficientnet_lite0": ({}, (1, 3, 32, 32), "cpu"),
    "timm:resnet10t": ({}, (2, 3, 32, 32), "cpu"),
}
OPTIONAL = {
    "efficientnet_lite0": "efficientnet_lite_pytorch",
    "timm:resnet10t": "timm",
}


def test_every_registered_model_has_a_case() -> None:
    missing = set(list_models()) - set(CASES)
    assert not missing, f"add a contract case for {missing}"


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest):
    arch = request.param
    if arch in OPTIONAL and importlib.util.find_spec(OPTIONAL[arch]) is None:
        pytest.skip(f"{OPTIONAL[arch]} not installed")
    kwargs, shape, device = CASES[arch]
    torch.manual_seed(0)
    with torch.device(device):
        net = create_model(arch, HEADS, **kwargs).eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        out = net(x)
        feats = net.forward_features(x)
        inter = net.intermediates(x, net.layer_names)
    return arch, net, x, out, feats, inter


def _has_values(t: torch.Tensor) -> bool:
    return t.device.type != "meta"


def test_forward_shapes(case) -> None:
    _arch, net, x, out, feats, _ = case
    b = x.shape[0]
    assert [tuple(o.shape) for o in out] == [(b, h) for h in HEADS]
    assert net.head_sizes == HEADS
    assert tuple(feats.shape) == (b, net.feature_dim)
    if _has_values(feats):
        assert all(torch.isfinite(o).all() for o in out)


def test_intermediates(case) -> None:
    _arch, net, x, _, feats, inter = case
    assert net.layer_names == [*CANONICAL_LAYERS, "pool"]
    assert list(inter) == net.layer_names
    maps = [inter[name] for name in CANONICAL_LAYERS]
    spatial_dims = x.ndim - 2
    for m in maps:
        assert m.ndim == x.ndim and m.shape[0] == x.shape[0]
    sizes = [m.shape[-1] for m in maps]
    assert sizes == sorted(sizes, reverse=True), sizes  # never grows with depth
    assert sizes[1] > sizes[2] > sizes[3] > sizes[4], sizes  # each stage after res2 downsamples
    assert maps[-1].shape[1] == net.feature_dim
    assert tuple(inter["pool"].shape) == (x.shape[0], net.feature_dim)
    if not _has_values(feats):
        return
    torch.testing.assert_close(inter["pool"], feats, rtol=1e-5, atol=1e-5)
    dims = tuple(range(2, 2 + spatial_dims))
    torch.testing.assert_close(inter["res5"].mean(dim=dims), feats, rtol=1e-5, atol=1e-5)


def test_model_args_round_trip(case, tmp_path) -> None:
    arch, net, x, out, _, _ = case
    args = net.model_args
    assert json.loads(json.dumps(args)) == args
    assert args["arch"] == arch
    with torch.device("meta"):  # shapes only: no need to initialise the weights
        rebuilt = build_from_args(args)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == want
    if not _has_values(x):
        return
    path = save_checkpoint(tmp_path / "ckpt.pt", net, epoch=3)
    loaded = load_model(path)
    assert not loaded.training
    with torch.no_grad():
        again = loaded(x)
    for a, b in zip(out, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
