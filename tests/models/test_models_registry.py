"""Registry: names, errors, pre-trained weights through torchvision's cache (no network)."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision

from clusterfit.errors import ClusterFitError
from clusterfit.models import build_from_args, create_model, list_models

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")


def test_list_models() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"resnet_cifar", "resnet18", "resnet50", "resnet152", "r2plus1d_18"} <= set(names)


def test_unknown_arch_suggests_close_matches() -> None:
    with pytest.raises(ClusterFitError, match=r"unknown architecture 'resnt18'.*'resnet18'"):
        create_model("resnt18", [2])
    with pytest.raises(ClusterFitError, match="from_module"):
        create_model("module", [2])


def test_bad_arch_kwargs_are_user_errors() -> None:
    with pytest.raises(ClusterFitError, match=r"bad keyword arguments \['widht'\].*'width'"):
        create_model("resnet_cifar", [2], widht=8)
    with pytest.raises(ClusterFitError, match="depth=12"):
        create_model("resnet_cifar", [2], depth=12)
    with pytest.raises(ClusterFitError, match="no pre-trained weights"):
        create_model("resnet_cifar", [2], pretrained=True)


def test_build_from_args_rejects_incomplete_args() -> None:
    with pytest.raises(ClusterFitError, match="model_args lacks"):
        build_from_args({"arch": "resnet18"})


def test_grey_torchvision_resnet_from_scratch() -> None:
    net = create_model("resnet18", [3], in_chans=1).eval()
    assert net.trunk.conv1.weight.shape == (64, 1, 7, 7)
    assert tuple(net(torch.rand(2, 1, 32, 32))[0].shape) == (2, 3)


# ------------------------------------------------------------------ pre-trained weights
@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TORCH_HOME, so no weights cached on this machine are found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def test_pretrained_download_failure_is_a_user_error(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline(url: str, dst: str, *args, **kwargs) -> None:
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ClusterFitError, match=r"could not be downloaded.*checkpoint path"):
        create_model("resnet18", [2], pretrained=True)
    assert calls and calls[0].endswith(".pth")


def test_pretrained_weights_from_torchvision_cache(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Put a stand-in for the ImageNet weights where torchvision's cache keeps them.
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(7)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cache / os.path.basename(weights.url))

    def no_download(*args, **kwargs) -> None:
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    net = create_model("resnet18", [5], pretrained=True).eval()
    torch.testing.assert_close(net.trunk.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert net.model_args["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert net.model_args["std"] == pytest.approx([0.229, 0.224, 0.225])
    # same features as torchvision's model on ImageNet-normalised input
    x = torch.rand(2, 3, 32, 32)
    reference.eval().fc = torch.nn.Identity()
    norm = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x), reference(norm))

    # grey variant: the first convolution sums the colour kernels
    grey = create_model("resnet18", [5], pretrained=True, in_chans=1)
    torch.testing.assert_close(
        grey.trunk.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True)
    )
    assert grey.model_args["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    # rebuilding from model_args does not touch the weights cache
    assert build_from_args(grey.model_args).trunk.conv1.weight.shape == (64, 1, 7, 7)


# ------------------------------------------------------------------ timm
@needs_timm
def test_timm_model_layers_from_feature_info() -> None:
    net = create_model("timm:resnet10t", [4], in_chans=1).eval()
    assert net.layer_nodes == {
        "conv1": "act1",
        "res2": "layer1",
        "res3": "layer2",
        "res4": "layer3",
        "res5": "layer4",
    }
    out = net.intermediates(torch.rand(2, 1, 64, 64), ["conv1", "res5"])
    assert tuple(out["conv1"].shape) == (2, 64, 32, 32)
    assert tuple(out["res5"].shape) == (2, 512, 2, 2)


@needs_timm
def test_timm_unknown_name() -> None:
    with pytest.raises(ClusterFitError, match=r"unknown timm model 'resnet10tt'.*resnet10t"):
        create_model("timm:resnet10tt", [2])
