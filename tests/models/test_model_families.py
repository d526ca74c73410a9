"""Model families by name (torchvision, timm) and the one probe-layer rule they follow."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models import (
    CANONICAL_LAYERS,
    build_from_args,
    create_model,
    list_models,
    recalibrate_batchnorm,
)
from clusterfit.models.backbone import (
    canonical_reduction,
    evenly_spaced,
    stage_rule,
    tokens_to_map,
)
from clusterfit.models.registry import check_pretrained, describe_models

HAS_TIMM = importlib.util.find_spec("timm") is not None


# ------------------------------------------------------------------ the rule, by hand
def test_stage_rule_resnet_shape() -> None:
    stages = [("conv1", 2.0), ("relu", 2.0), ("maxpool", 4.0), ("layer1", 4.0)]
    stages += [("layer2", 8.0), ("layer3", 16.0), ("layer4", 32.0)]
    assert stage_rule(stages) == {
        "conv1": "relu",
        "res2": "layer1",
        "res3": "layer2",
        "res4": "layer3",
        "res5": "layer4",
    }


def test_stage_rule_without_a_stem_at_half_resolution() -> None:
    # a patchify stem straight to 1/4 (ConvNeXt): conv1 is the stem itself
    stages = [("stem", 4.0), ("s1", 4.0), ("s2", 8.0), ("s3", 16.0), ("s4", 32.0)]
    assert stage_rule(stages) == {
        "conv1": "stem",
        "res2": "s1",
        "res3": "s2",
        "res4": "s3",
        "res5": "s4",
    }


def test_stage_rule_rounds_odd_reductions_and_fills_a_missing_one() -> None:
    # unpadded convolutions (AlexNet, SqueezeNet) give 4.07, 8.3, 17.2; no map at 1/32
    stages = [("a", 2.05), ("b", 4.15), ("c", 8.3), ("d", 17.2), ("x", None)]
    assert stage_rule(stages) == {
        "conv1": "a",
        "res2": "b",
        "res3": "c",
        "res4": "d",
        "res5": "d",
    }


def test_evenly_spaced_blocks() -> None:
    assert evenly_spaced(12) == {"conv1": 0, "res2": 3, "res3": 6, "res4": 8, "res5": 11}
    assert evenly_spaced(5) == {"conv1": 0, "res2": 1, "res3": 2, "res4": 3, "res5": 4}


def test_tokens_to_map_drops_prefix_tokens() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # CLS + 2x2 grid, D=3
    out = tokens_to_map(tokens, 1, (2, 2))
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[1, :, 1, 0], tokens[1, 1 + 2])  # row 1, column 0 = patch 2
    with pytest.raises(ClusterFitError, match="grid"):
        tokens_to_map(tokens, 1, (3, 3))


# ------------------------------------------------------------------ torchvision, every family
# One (small) model of every torchvision family, checked on the meta device (shapes only): the
# five probe layers exist and sit at the resolutions the rule names.
TV_FAMILIES = {
    "alexnet": (4, 4, 8, 16, 32),
    "convnext_tiny": (4, 4, 8, 16, 32),
    "densenet121": (2, 4, 8, 16, 32),
    "efficientnet_b0": (2, 4, 8, 16, 32),
    "efficientnet_v2_s": (2, 4, 8, 16, 32),
    "googlenet": (2, 4, 8, 16, 32),
    "inception_v3": (2, 4, 8, 16, 32),
    "mnasnet0_5": (2, 4, 8, 16, 32),
    "mobilenet_v2": (2, 4, 8, 16, 32),
    "mobilenet_v3_small": (2, 4, 8, 16, 32),
    "regnet_x_400mf": (2, 4, 8, 16, 32),
    "resnext50_32x4d": (2, 4, 8, 16, 32),
    "shufflenet_v2_x0_5": (2, 4, 8, 16, 32),
    "squeezenet1_1": (2, 4, 8, 16, 16),
    "swin_t": (4, 4, 8, 16, 32),
    "vgg11": (2, 4, 8, 16, 32),
    "vit_b_32": (32, 32, 32, 32, 32),
    "wide_resnet50_2": (2, 4, 8, 16, 32),
}


def _family(name: str) -> str:
    return re.match(r"[a-z]+", name).group()  # type: ignore[union-attr]


def test_every_torchvision_family_is_covered() -> None:
    families = {_family(n) for n in list_models(include_torchvision=True)}
    covered = {_family(n) for n in [*TV_FAMILIES, "resnet18", "r2plus1d_18"]}
    assert families - covered == {"maxvit"}  # maxvit_t: 15 s to trace, checked by hand


@pytest.mark.parametrize("arch", sorted(TV_FAMILIES))
def test_torchvision_family_layers_follow_the_rule(arch: str) -> None:
    try:
        with torch.device("meta"):
            net = create_model(arch, [3]).eval()
    except (NotImplementedError, RuntimeError):  # a constructor that needs real tensors
        net = create_model(arch, [3]).eval()
    device = next(net.parameters()).device
    x = torch.zeros(2, 3, 224, 224, device=device)
    with torch.no_grad():
        maps = net.intermediates(x, net.layer_names)
    assert list(maps) == [*CANONICAL_LAYERS, "pool"]
    # unpadded convolutions (Inception, SqueezeNet) give 224 / 109 etc.: the nearest power of 2
    got = tuple(canonical_reduction(224 / maps[n].shape[-1]) for n in CANONICAL_LAYERS)
    assert got == TV_FAMILIES[arch]
    assert maps["pool"].shape == (2, net.feature_dim)


def test_module_outputs_not_a_branch_of_them() -> None:
    """A stage whose forward ends in a concatenation (DenseNet's dense block, Inception's mixed
    blocks) is probed at its output, not at its last branch."""
    with torch.device("meta"):
        dense = create_model("densenet121", []).eval()
        googlenet = create_model("googlenet", []).eval()
    x = torch.zeros(1, 3, 224, 224, device="meta")
    with torch.no_grad():
        assert dense.intermediates(x, ["res2"])["res2"].shape[1] == 256  # 64 + 6 x 32
        assert googlenet.intermediates(x, ["res3"])["res3"].shape[1] == 480  # inception3b


def test_torchvision_model_trains_saves_and_rebuilds() -> None:
    torch.manual_seed(0)
    net = create_model("mobilenet_v3_small", [4], in_chans=1, mean=0.3, std=0.2)
    x = torch.rand(4, 1, 64, 64)
    loss = nn.functional.cross_entropy(net(x)[0], torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    twin = build_from_args(net.model_args)
    twin.load_state_dict(net.state_dict())
    net.eval()
    twin.eval()
    with torch.no_grad():
        a = net.intermediates(x, ["res3", "pool"])
        b = twin.intermediates(x, ["res3", "pool"])
    assert torch.equal(a["res3"], b["res3"]) and torch.equal(a["pool"], b["pool"])


def test_weights_by_name_are_checked_without_downloading() -> None:
    check_pretrained("resnet18", "IMAGENET1K_V1")
    check_pretrained("convnext_tiny", None)
    with pytest.raises(ClusterFitError, match="IMAGENET1K_V1"):
        check_pretrained("resnet18", "IMAGENET9K")
    with pytest.raises(ClusterFitError, match="no pre-trained weights"):
        check_pretrained("resnet_cifar")
    with pytest.raises(ClusterFitError, match="torchvision models"):
        create_model("resnet_cifar", weights="DEFAULT")


def test_failed_download_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ClusterFitError, match=r"could not be downloaded.*checkpoint"):
        create_model("mobilenet_v3_small", weights="IMAGENET1K_V1")


def test_unknown_name_suggests() -> None:
    with pytest.raises(ClusterFitError, match="convnext_tiny"):
        create_model("convnext_tiyn")


def test_describe_models_names_families_extras_and_rule() -> None:
    text = describe_models()
    for word in ("convnext_tiny", "vit_b_16", "[efficientnet]", "[timm]", "timm:", "res5"):
        assert word in text


# ------------------------------------------------------------------ timm
@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed")
def test_timm_vit_probe_layers_are_evenly_spaced_blocks() -> None:
    torch.manual_seed(0)
    net = create_model("timm:test_vit", [3], img_size=32, patch_size=8).eval()
    depth = len(net.trunk.model.blocks)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        maps = net.intermediates(x, net.layer_names)
        # the reference: timm's own blocks, run by hand
        t = net.trunk.model.forward_intermediates(
            net.prep(x), indices=[depth - 1], output_fmt="NLC", return_prefix_tokens=False
        )[1][0]
        pooled = net.forward_features(x)
    assert maps["res5"].shape == (2, net.feature_dim, 4, 4)
    assert torch.allclose(maps["res5"].flatten(2).transpose(1, 2), t, atol=1e-6)
    assert torch.allclose(maps["pool"], pooled)
    assert maps["conv1"].shape == maps["res3"].shape


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed")
def test_timm_convnext_takes_its_stem_as_conv1() -> None:
    net = create_model("timm:test_convnext", [3])
    assert net.layer_nodes["conv1"] == "stem"
    assert net.layer_nodes["res5"] == "stages.3"


# ------------------------------------------------------------------ the random-init floor
def test_recalibrated_batchnorm_holds_the_data_statistics() -> None:
    torch.manual_seed(0)
    net = create_model("resnet_cifar", [2], width=4).eval()
    first_bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    handle = first_bn.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    batches = [torch.rand(8, 3, 16, 16) * 3 + 1 for _ in range(3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    n = recalibrate_batchnorm(net, batches)
    handle.remove()
    assert n == 24
    inputs = torch.cat(seen)  # 24 x C x h x w
    mean = inputs.mean(dim=(0, 2, 3))
    per_batch_var = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in seen])
    assert torch.allclose(first_bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(first_bn.running_var, per_batch_var.mean(0), atol=1e-5)
    assert first_bn.momentum == 0.1 and not net.training
    after = {k: v for k, v in net.state_dict().items() if "running" not in k}
    assert all(torch.equal(weights[k], after[k]) for k in weights if "num_batches" not in k)
