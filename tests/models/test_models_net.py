"""Net: prep (channel adaptation, normalisation), Jigsaw patches, intermediates, heads."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models import Net, count_parameters, create_model, from_module
from clusterfit.models.resnet_cifar import ResNetCifar


def small_net(**kwargs) -> Net:
    torch.manual_seed(0)
    kw = {"depth": 10, "width": 4}
    kw.update(kwargs)
    return create_model("resnet_cifar", kw.pop("head_sizes", [4, 6]), **kw)


class _TracedTrunk(ResNetCifar):
    """A ResNetCifar with a forward of its own: not a plain Sequential, so Net.intermediates
    goes through the cached FX extractor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def traced_net() -> Net:
    """A Net whose named layers come from the FX extractor (same layers as small_net)."""
    torch.manual_seed(0)
    trunk = _TracedTrunk(depth=10, width=4)
    return from_module(trunk, {n: n for n in ("conv1", "res2", "res3", "res4", "res5")})


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ prep
def test_prep_normalises_with_given_statistics() -> None:
    net = small_net(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    x = rand(2, 3, 8, 8)
    want = torch.empty_like(x)
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)]):
        want[:, c] = (x[:, c] - m) / s
    torch.testing.assert_close(net.prep(x), want)
    assert net.model_args["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert net.model_args["std"] == pytest.approx([0.5, 0.25, 2.0])


def test_default_normalisation_maps_unit_interval_to_minus_one_one() -> None:
    net = small_net()
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(net.prep(x)[0, :, 0], torch.tensor([[-1.0, 0.0, 1.0]] * 3))


def test_grey_input_to_colour_model_equals_repeated_input() -> None:
    net = small_net(in_chans=3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4]).eval()
    grey = rand(3, 1, 16, 16)
    with torch.no_grad():
        a, b = net(grey), net(grey.repeat(1, 3, 1, 1))
        fa, fb = net.forward_features(grey), net.forward_features(grey.repeat(1, 3, 1, 1))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    torch.testing.assert_close(fa, fb, rtol=0, atol=0)


def test_colour_input_to_grey_model_equals_channel_mean() -> None:
    net = small_net(in_chans=1).eval()
    colour = rand(3, 3, 16, 16)
    with torch.no_grad():
        a = net.intermediates(colour, ["res3", "pool"])
        b = net.intermediates(colour.mean(dim=1, keepdim=True), ["res3", "pool"])
    torch.testing.assert_close(a["res3"], b["res3"], rtol=0, atol=0)
    torch.testing.assert_close(a["pool"], b["pool"], rtol=0, atol=0)


def test_bad_inputs_are_user_errors() -> None:
    net = small_net()
    with pytest.raises(ClusterFitError, match="2 channels"):
        net(rand(1, 2, 8, 8))
    with pytest.raises(ClusterFitError, match="float"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ClusterFitError, match="4-d input"):
        net(rand(3, 8, 8))
    with pytest.raises(ClusterFitError, match="mean has 2 values"):
        small_net(mean=[0.1, 0.2])


# ------------------------------------------------------------------ patches (Jigsaw)
def test_input_size_resizes_before_the_trunk(tmp_path) -> None:
    """With input_size S the network is the same network on the bilinearly resized input
    (antialiased when shrinking); it survives a checkpoint, and unset it leaves model_args as
    they were."""
    import torch.nn.functional as F

    from clusterfit.models import load_model, save_checkpoint

    plain = small_net().eval()
    assert "input_size" not in plain.model_args
    sized = copy.deepcopy(plain).set_input_size(20).eval()
    x = rand(2, 3, 12, 12)
    with torch.no_grad():
        up = F.interpolate(x, size=(20, 20), mode="bilinear")
        torch.testing.assert_close(sized.forward_features(x), plain.forward_features(up))
        big = rand(2, 3, 40, 40, seed=1)
        down = F.interpolate(big, size=(20, 20), mode="bilinear", antialias=True)
        torch.testing.assert_close(sized(big)[0], plain(down)[0])
        assert sized.intermediates(x, ["res2"])["res2"].shape[-1] == 20
    path = save_checkpoint(tmp_path / "n.pt", sized)
    back = load_model(path).eval()
    assert back.input_size == 20 and back.model_args["input_size"] == 20
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x), sized.forward_features(x))
    with pytest.raises(ClusterFitError, match="input_size"):
        plain.set_input_size(0)


def test_input_size_keeps_the_frames_of_a_clip() -> None:
    net = create_model("r2plus1d_narrow", [3]).set_input_size(12)
    assert net.prep(rand(1, 3, 4, 8, 8)).shape == (1, 3, 4, 12, 12)


def test_patches_forward_equals_per_patch_computation() -> None:
    net = small_net(patches=9, head_sizes=[7, 3]).eval()
    assert [h.in_features for h in net.heads] == [9 * net.feature_dim] * 2
    x = rand(2, 9, 3, 12, 12)
    with torch.no_grad():
        out = net(x)
        feats = torch.cat([net.forward_features(x[:, i]) for i in range(9)], dim=1)
        want = [head(feats) for head in net.heads]
    assert [tuple(o.shape) for o in out] == [(2, 7), (2, 3)]
    for a, b in zip(out, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the order of the patches matters: the heads see which patch is where
    with torch.no_grad():
        shuffled = net(x[:, torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8])])
    assert not torch.allclose(shuffled[0], out[0])


def test_patches_input_shape_is_checked() -> None:
    net = small_net(patches=9)
    with pytest.raises(ClusterFitError, match="9 patches"):
        net(rand(2, 4, 3, 12, 12))
    with pytest.raises(ClusterFitError, match="5-d input"):
        net(rand(2, 3, 12, 12))


def test_reset_heads() -> None:
    net = small_net()
    trunk_before = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    assert net.reset_heads([10, 2, 5], patches=4) is net
    assert net.head_sizes == [10, 2, 5] and net.patches == 4
    assert [h.in_features for h in net.heads] == [4 * net.feature_dim] * 3
    out = net.eval()(rand(2, 4, 3, 8, 8))
    assert [tuple(o.shape) for o in out] == [(2, 10), (2, 2), (2, 5)]
    assert net.model_args["head_sizes"] == [10, 2, 5] and net.model_args["patches"] == 4
    for k, v in net.trunk.state_dict().items():
        torch.testing.assert_close(v, trunk_before[k])
    assert net.reset_heads([]).head_sizes == [] and net(rand(1, 3, 8, 8)) == []


# ------------------------------------------------------------------ intermediates
def _reference_res3(net: Net, x: torch.Tensor) -> torch.Tensor:
    """res3 by running the Sequential trunk's first three children by hand."""
    y = net.prep(x)
    for name in ("conv1", "res2", "res3"):
        y = getattr(net.trunk, name)(y)
    return y


def test_cached_extractor_follows_weight_updates() -> None:
    net = traced_net()
    x = rand(4, 3, 16, 16)
    net.eval()
    before = net.intermediates(x, ["res3", "pool"])
    torch.testing.assert_close(before["res3"], _reference_res3(net, x))
    extractors = dict(net._extractors)
    assert len(extractors) == 1

    # an optimizer step changes the weights in place
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = sum(o.square().mean() for o in net(x)) + net.forward_features(x).square().mean()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        after = net.intermediates(x, ["res3", "pool"])
        torch.testing.assert_close(after["res3"], _reference_res3(net, x))
        torch.testing.assert_close(after["pool"], net.forward_features(x))
    assert not torch.allclose(after["res3"], before["res3"])
    assert net._extractors.keys() == extractors.keys()
    assert net._extractors[next(iter(extractors))][1] is next(iter(extractors.values()))[1]

    # load_state_dict copies in place; the cached extractor still follows
    torch.manual_seed(123)
    other = from_module(_TracedTrunk(depth=10, width=4), net.layer_nodes)
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            net.intermediates(x, ["res3"])["res3"], other.eval().intermediates(x, ["res3"])["res3"]
        )

    # replacing a parameter object: the cache is rebuilt
    with torch.no_grad():
        conv = net.trunk.conv1[0]
        conv.weight = nn.Parameter(conv.weight * -1.0)
        torch.testing.assert_close(net.intermediates(x, ["res3"])["res3"], _reference_res3(net, x))


def test_sequential_trunk_equals_fx_extractor_without_tracing() -> None:
    """A plain Sequential trunk's layers are its children's outputs, bit for bit what the FX
    extractor gives (same weights), in train and eval mode, and no graph is traced."""
    seq = small_net()
    traced = copy.deepcopy(seq)
    traced.trunk.__class__ = _TracedTrunk  # the same modules and weights, its own forward
    x = rand(4, 3, 16, 16)
    names = ["res4", "conv1", "pool", "res2"]
    for mode in (True, False):
        seq.train(mode)
        traced.train(mode)
        with torch.no_grad():
            got, want = seq.intermediates(x, names), traced.intermediates(x, names)
        assert list(got) == names
        for name in names:
            assert torch.equal(got[name], want[name]), name
        with torch.no_grad():  # (in train mode both update their BatchNorm statistics again)
            assert torch.equal(got["pool"], seq.forward_features(x))
            assert torch.equal(want["pool"], traced.forward_features(x))
    assert seq._extractors == {} and seq._nodes is None
    assert traced._extractors


def test_sequential_trunk_stops_after_the_last_layer_asked() -> None:
    net = small_net().eval()
    ran: list[str] = []
    for name, child in net.trunk.named_children():
        child.register_forward_hook(lambda *_, name=name: ran.append(name))
    with torch.no_grad():
        net.intermediates(rand(2, 3, 16, 16), ["res3", "conv1"])
    assert ran == ["conv1", "res2", "res3"]


def test_intermediates_follow_train_mode() -> None:
    net = small_net().train()
    x = rand(4, 3, 16, 16)
    got = net.intermediates(x, ["res3"])["res3"]
    want = _reference_res3(net, x)  # BatchNorm with batch statistics
    torch.testing.assert_close(got, want)
    net.eval()
    got_eval = net.intermediates(x, ["res3"])["res3"]
    torch.testing.assert_close(got_eval, _reference_res3(net, x))
    assert not torch.allclose(got, got_eval)


def test_extractor_cache_is_not_state_and_copies_are_independent() -> None:
    net = traced_net().eval()
    x = rand(2, 3, 16, 16)
    net.intermediates(x, ["res2", "res4"])
    assert net._extractors
    assert all(k.split(".")[0] in {"prep", "trunk", "heads"} for k in net.state_dict())
    assert {n.split(".")[0] for n, _ in net.named_modules() if n} == {"prep", "trunk", "heads"}
    twin = copy.deepcopy(net)
    assert twin._extractors == {}
    with torch.no_grad():
        for p in twin.trunk.parameters():
            p.mul_(0.5)
    with torch.no_grad():
        mine = net.intermediates(x, ["res4"])["res4"]
        theirs = twin.intermediates(x, ["res4"])["res4"]
        torch.testing.assert_close(mine, net.intermediates(x, ["res2", "res4"])["res4"])
    assert not torch.allclose(mine, theirs)
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone.intermediates(x, ["res4"])["res4"], mine)


def test_unknown_layer_lists_valid_names() -> None:
    net = small_net()
    with pytest.raises(ClusterFitError, match=r"res6.*conv1.*res5.*pool"):
        net.intermediates(rand(1, 3, 8, 8), ["res6"])


def test_intermediates_spatial_sizes_on_fashion_mnist_shape() -> None:
    net = small_net(in_chans=1).eval()
    out = net.intermediates(rand(2, 1, 28, 28), net.layer_names)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "conv1": (2, 4, 28, 28),
        "res2": (2, 4, 28, 28),
        "res3": (2, 8, 14, 14),
        "res4": (2, 16, 7, 7),
        "res5": (2, 32, 4, 4),
        "pool": (2, 32),
    }


# ------------------------------------------------------------------ from_module
class TinyConv(nn.Module):
    """A user network: two conv stages, returns a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.stem(x))


def test_from_module_feature_map() -> None:
    torch.manual_seed(0)
    module = TinyConv()
    net = from_module(module, {"conv1": "stem", "res2": "stage"}, head_sizes=[3])
    assert net.feature_dim == 10  # inferred
    assert net.layer_names == ["conv1", "res2", "pool"]
    x = rand(2, 3, 8, 8)
    out = net.intermediates(x, net.layer_names)
    torch.testing.assert_close(out["conv1"], module.stem(net.prep(x)))
    torch.testing.assert_close(out["res2"], module(net.prep(x)))
    torch.testing.assert_close(out["pool"], module(net.prep(x)).mean(dim=(2, 3)))
    assert tuple(net(x)[0].shape) == (2, 3)
    assert net.model_args["arch"] == "module"
    assert net.model_args["arch_kwargs"]["module_class"].endswith("TinyConv")


def test_from_module_vector_output_and_patches() -> None:
    module = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = from_module(module, head_sizes=[2], patches=4).eval()
    assert net.feature_dim == 5
    x = rand(3, 4, 3, 6, 6)
    feats = torch.cat([net.forward_features(x[:, i]) for i in range(4)], dim=1)
    torch.testing.assert_close(net(x)[0], net.heads[0](feats))
    assert net.layer_names == ["pool"]


def test_from_module_errors() -> None:
    with pytest.raises(ClusterFitError, match="feature_dim is 7"):
        from_module(TinyConv(), feature_dim=7, head_sizes=[2])(rand(1, 3, 8, 8))
    with pytest.raises(ClusterFitError, match="unknown canonical layer"):
        from_module(TinyConv(), {"layer9": "stem"})
    net = from_module(TinyConv(), {"conv1": "nope"})
    with pytest.raises(ClusterFitError, match="'nope' does not exist"):
        net.intermediates(rand(1, 3, 8, 8), ["conv1"])


def test_count_parameters() -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 3*4+4 + 4*2+2 = 26
    assert count_parameters(module) == 26
    module[0].weight.requires_grad_(False)
    assert count_parameters(module, trainable_only=True) == 14


def test_channels_last_gives_same_outputs() -> None:
    net = small_net().eval()
    x = rand(2, 3, 16, 16)
    with torch.no_grad():
        want = net(x)
        inter = net.intermediates(x, ["res3"])["res3"]
        net.channels_last()
        got = net(x)
        inter_cl = net.intermediates(x, ["res3"])["res3"]
    assert net.trunk.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(inter, inter_cl, rtol=1e-4, atol=1e-5)


def test_extractor_follows_dtype_conversion_and_accepts_a_single_name() -> None:
    net = small_net().eval()
    x = rand(2, 3, 16, 16)
    net.intermediates(x, ["res3"])
    net.double()
    got = net.intermediates(x.double(), "res3")
    assert list(got) == ["res3"] and got["res3"].dtype == torch.float64
    torch.testing.assert_close(got["res3"], _reference_res3(net, x.double()))
