"""Every torchvision classification model by name (``torchvision.models.list_models``).

ClusterFit takes any pre-trained network as N_pre (Yan et al., CVPR 2020, §3.1) and any
architecture as N_cf (§3.2). A torchvision model becomes a trunk (everything up to its last
spatial feature map, cut with ``create_feature_extractor``) and five probe layers named by the
rule of :data:`clusterfit.models.backbone.LAYER_RULE`, found by running the model once on the
``meta`` device (no memory, no compute): each module's output resolution tells where the stages
end. Vision transformers (``vit_*``) and Swin (``swin_*``, channels-last stages) have their own
small trunks. Weights: ``weights=None`` (random init), ``"DEFAULT"`` or any name of the model's
weights enum (``IMAGENET1K_V1``, ...).
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    LayerTrunk,
    canonical_reduction,
    download_failed,
    evenly_spaced,
    stage_rule,
    stats_for,
    tokens_to_map,
)

#: Top-level modules that belong to the classifier, not the trunk.
HEAD_MODULES = frozenset(
    {"fc", "classifier", "heads", "head", "avgpool", "dropout", "aux1", "aux2", "AuxLogits"}
)
#: The size of the blank image the stages are found with (every model here takes it).
PROBE_SIZE = 224


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models."""
    import torchvision.models
    from torchvision.models import list_models

    return list(list_models(module=torchvision.models))


def _new(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``get_model(name, weights=None, **kwargs)``; a keyword that neither the builder nor the
    model class names is an error (torchvision passes unknown ones on, and some classes drop
    them silently)."""
    from torchvision.models import get_model, get_model_builder

    try:
        model = get_model(name, weights=None, **kwargs)
    except TypeError as e:
        raise ClusterFitError(f"bad keyword arguments {sorted(kwargs)} for {name!r}: {e}") from e
    skip = {"self", "weights", "progress", "kwargs", "args"}
    accepted = {
        p
        for fn in (get_model_builder(name), type(model).__init__)
        for p in inspect.signature(fn).parameters
        if p not in skip
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ClusterFitError(
            f"bad keyword arguments {unknown} for {name!r}; it accepts {sorted(accepted)}"
        )
    return model


def tv_weights(name: str, weights: str) -> Any:
    """The weights enum member ``weights`` (``DEFAULT`` or a name) of torchvision model ``name``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ClusterFitError(
            f"pretrain.weights={weights!r} is not a weight of {name!r}; choose one of: {known}"
        ) from None


def load_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load the named weights of torchvision model ``name`` into ``model``."""
    w = tv_weights(name, weights)
    try:
        state = w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        raise download_failed(f"torchvision {name} ({w})", e) from e
    model.load_state_dict(state)


def _reduction(shape: Sequence[int] | None) -> float | None:
    if shape is None or len(shape) != 4 or shape[-1] < 1:
        return None
    return PROBE_SIZE / shape[-1]


def _blank(model: nn.Module) -> torch.Tensor:
    """A blank 1 x 3 x PROBE_SIZE x PROBE_SIZE image on the model's device."""
    ref = next(iter(model.parameters()))
    return torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=ref.device)


def _record(model: nn.Module) -> tuple[dict[str, tuple[Any, Any]], dict[str, int]]:
    """Input and output shape of every module on a blank image, and completion order."""
    shapes: dict[str, tuple[Any, Any]] = {}
    order: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod: nn.Module, args: tuple, out: Any) -> None:
            if name in shapes:
                return
            x = args[0] if args and torch.is_tensor(args[0]) else None
            shapes[name] = (
                None if x is None else tuple(x.shape),
                tuple(out.shape) if torch.is_tensor(out) else None,
            )
            order[name] = len(order)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(_blank(model))
    finally:
        for h in handles:
            h.remove()
    return shapes, order


def _stages(model: nn.Module, shapes: dict, order: dict) -> list[tuple[str, float | None]]:
    """The modules at which stages end: top-level modules, expanded into their children while a
    module holds a resolution change inside it that is neither its input's nor its output's."""

    def children(prefix: str) -> list[str]:
        mod = model.get_submodule(prefix) if prefix else model
        out: list[str] = []
        for child, _ in mod.named_children():
            if not prefix and child in HEAD_MODULES:
                continue
            full = f"{prefix}.{child}" if prefix else child
            out.extend([full] if full in order else children(full))  # uncalled: a ModuleList
        return sorted(out, key=order.__getitem__)

    def red(name: str, which: int) -> int:
        r = _reduction(shapes[name][which])
        return canonical_reduction(r) if r else 0

    items = children("")
    while True:
        expanded: list[str] = []
        for item in items:
            kids = children(item)
            inside = {red(k, 1) for k in kids} - {0, red(item, 0), red(item, 1)}
            expanded.extend(kids if inside else [item])
        if expanded == items:
            break
        items = expanded
    return [(n, _reduction(shapes[n][1])) for n in items]


def _node_outputs(model: nn.Module) -> tuple[list[str], dict[str, Any]]:
    """The eval-mode FX nodes of the model's body (classifier left out), in order, and their
    outputs on a blank image."""
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, nodes = get_graph_node_names(model)
        body = [n for n in nodes if n.split(".")[0] not in HEAD_MODULES and n != "x"]
        gm = create_feature_extractor(model, return_nodes=body)
        with torch.no_grad():
            outs = gm(_blank(model))
    return body, outs


def _module_output_node(module: str, shape: Any, nodes: list[str], outs: dict) -> str:
    """The FX node that carries ``module``'s output: the last node inside it of that shape."""
    inside = [n for n in nodes if n == module or n.startswith(module + ".")]
    same = [n for n in inside if torch.is_tensor(outs.get(n)) and tuple(outs[n].shape) == shape]
    if not same:
        raise ClusterFitError(f"no FX node carries the output of module {module!r}")
    return same[-1]


@functools.lru_cache(maxsize=64)
def _analyse(name: str, kwargs_json: str) -> tuple[str, int, dict[str, str]]:
    """(FX node of the last spatial map, its channels, canonical layer -> FX node) of a CNN,
    found once on the meta device (no memory, no compute; on the CPU for a model whose
    construction needs real tensors)."""
    try:
        with torch.device("meta"):
            model = _new(name, json.loads(kwargs_json)).eval()
    except (NotImplementedError, RuntimeError):
        model = _new(name, json.loads(kwargs_json)).eval()
    try:
        shapes, order = _record(model)
        nodes, outs = _node_outputs(model)
        last = next(
            n
            for n in reversed(nodes)
            if torch.is_tensor(outs.get(n)) and outs[n].ndim == 4 and min(outs[n].shape[-2:]) > 1
        )
        stage_modules = stage_rule(_stages(model, shapes, order))
        layers = {
            k: _module_output_node(m, shapes[m][1], nodes, outs) for k, m in stage_modules.items()
        }
    except StopIteration:
        raise ClusterFitError(
            f"torchvision {name!r} produces no spatial feature map before its classifier"
        ) from None
    except ClusterFitError:
        raise
    except Exception as e:
        raise ClusterFitError(
            f"torchvision {name!r} could not be cut into a trunk and probe layers "
            f"({type(e).__name__}: {e})"
        ) from e
    return last, int(outs[last].shape[1]), layers


class TorchvisionCNN(LayerTrunk):
    """A torchvision CNN cut at its last spatial feature map; one FX graph returns that map and
    the five probe layers' maps (module outputs found by :func:`_analyse`)."""

    layer_names = ("conv1", "res2", "res3", "res4", "res5")

    def __init__(self, model: nn.Module, last: str, nodes: dict[str, str]) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.last = last
        self.nodes = dict(nodes)
        wanted = sorted({last, *self.nodes.values()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.body = create_feature_extractor(model, return_nodes={n: n for n in wanted})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[self.last]

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self.body(x)
        result = {n: out[self.nodes[n]] for n in names if n != "pool"}
        if "pool" in names:
            result["pool"] = out[self.last].mean(dim=(2, 3))
        return result


class TorchvisionViT(LayerTrunk):
    """torchvision ``vit_*``: patch tokens of evenly spaced blocks as maps; ``pool`` = the CLS
    token after the final norm (what the classifier reads). Takes its fixed image size only."""

    layer_names = ("conv1", "res2", "res3", "res4", "res5")

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        vit.heads = nn.Identity()
        self.vit = vit
        self.blocks = evenly_spaced(len(vit.encoder.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        vit, enc = self.vit, self.vit.encoder
        grid = (x.shape[-2] // vit.patch_size, x.shape[-1] // vit.patch_size)
        t = vit._process_input(x)
        t = torch.cat([vit.class_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = enc.dropout(t + enc.pos_embedding)
        at = {n: self.blocks[n] for n in names if n != "pool"}
        last = len(enc.layers) - 1 if "pool" in names else max(at.values(), default=-1)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(enc.layers[: last + 1]):
            t = block(t)
            for n, j in at.items():
                if j == i:
                    out[n] = tokens_to_map(t, 1, grid)
        if "pool" in names:
            out["pool"] = enc.ln(t)[:, 0]
        return out


class TorchvisionSwin(LayerTrunk):
    """torchvision ``swin_*``: its stages work channels-last (B x h x w x C); the probe layers
    are the patch embedding and the four stage outputs as B x C x h x w maps."""

    layer_names = ("conv1", "res2", "res3", "res4", "res5")
    STAGE_INDEX: ClassVar[dict[str, int]] = {"conv1": 0, "res2": 1, "res3": 3, "res4": 5, "res5": 7}

    def __init__(self, swin: nn.Module) -> None:
        super().__init__()
        self.features = swin.features
        self.norm = swin.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x)).permute(0, 3, 1, 2)

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        at = {self.STAGE_INDEX[n]: n for n in names if n != "pool"}
        for i, stage in enumerate(self.features):
            x = stage(x)
            y = self.norm(x) if i == len(self.features) - 1 else x
            if i in at:
                out[at[i]] = y.permute(0, 3, 1, 2)
        if "pool" in names:
            out["pool"] = self.norm(x).permute(0, 3, 1, 2).mean(dim=(2, 3))
        return out


def build_torchvision(
    name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    **kwargs: Any,
) -> Backbone:
    """A torchvision classification model as a :class:`Backbone` (input: 3 channels; grey images
    are repeated to 3 by the Net's ``prep``). ``weights`` names the pre-trained weights
    (``pretrained`` alone means ``DEFAULT``)."""
    model = _new(name, kwargs)
    if pretrained or weights is not None:
        load_weights(model, name, weights or "DEFAULT")
        pretrained = True
    mean = stats_for(IMAGENET_MEAN, 3, pretrained)
    std = stats_for(IMAGENET_STD, 3, pretrained)
    if name.startswith("vit_"):
        trunk: nn.Module = TorchvisionViT(model)
        layers = {n: n for n in TorchvisionViT.layer_names}
        return Backbone(trunk, int(model.hidden_dim), layers, mean=mean, std=std)
    if name.startswith("swin_"):
        trunk = TorchvisionSwin(model)
        layers = {n: n for n in TorchvisionSwin.layer_names}
        dim = int(model.norm.normalized_shape[0])
        return Backbone(trunk, dim, layers, mean=mean, std=std)
    last, dim, nodes = _analyse(name, json.dumps(kwargs, sort_keys=True))
    trunk = TorchvisionCNN(model, last, nodes)
    return Backbone(trunk, dim, {n: n for n in trunk.layer_names}, mean=mean, std=std)
