"""Every timm model by name: ``timm:<name>`` (timm installed: ``pip install -e ".[timm]"``).

ClusterFit takes any pre-trained network as N_pre (Yan et al., CVPR 2020, §3.1). Probe layers
follow :data:`clusterfit.models.backbone.LAYER_RULE` from timm's ``feature_info``:

- hierarchical networks (CNNs, Swin, ...): the last module at each reduction, through torch.fx,
  the network's stem standing in for conv1 when no module sits at 1/2;
- isotropic networks (ViT, DeiT, ...: every block at one reduction): evenly spaced blocks,
  through timm's ``forward_intermediates`` (patch tokens as B x D x h x w maps); ``pool`` is the
  model's own pooling (CLS token or mean, ``forward_head(pre_logits=True)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models.backbone import (
    Backbone,
    LayerTrunk,
    download_failed,
    evenly_spaced,
    stage_rule,
    stats_for,
)

STEM_NAMES = ("stem", "conv_stem", "patch_embed", "conv1")


class TimmTokens(LayerTrunk):
    """An isotropic timm network: five evenly spaced blocks as maps, the model's own pooling."""

    layer_names = ("conv1", "res2", "res3", "res4", "res5")

    def __init__(self, model: nn.Module, depth: int) -> None:
        super().__init__()
        self.model = model
        self.blocks = evenly_spaced(depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        at = {n: self.blocks[n] for n in names if n != "pool"}
        pool = "pool" in names
        out: dict[str, torch.Tensor] = {}
        if not at:
            return {"pool": self.forward(x)} if pool else {}
        indices = sorted(set(at.values()))
        res = self.model.forward_intermediates(
            x, indices=indices, output_fmt="NCHW", intermediates_only=not pool
        )
        maps = res if not pool else res[1]
        for n, i in at.items():
            out[n] = maps[indices.index(i)]
        if pool:
            out["pool"] = self.model.forward_head(res[0], pre_logits=True)
        return out


def _hierarchical_layers(model: nn.Module, feature_info: list[dict]) -> dict[str, str]:
    stages: list[tuple[str, float | None]] = [
        (str(i["module"]), float(i["reduction"])) for i in feature_info
    ]
    if stages and stages[0][1] and stages[0][1] > 2:
        stem = next((s for s in STEM_NAMES if isinstance(getattr(model, s, None), nn.Module)), None)
        if stem is not None and stem != stages[0][0]:
            stages.insert(0, (stem, stages[0][1]))
    return stage_rule(stages)


def build_timm(name: str, in_chans: int = 3, pretrained: bool = False, **kwargs: Any) -> Backbone:
    """``timm.create_model(name)`` as a :class:`Backbone` (classifier removed)."""
    try:
        import timm
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError as e:
        raise ClusterFitError(
            f"model 'timm:{name}' needs the optional package timm: pip install timm"
        ) from e
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ClusterFitError(
            f"unknown timm model {name!r}" + (f"; did you mean {close}?" if close else "")
        )
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs
        )
    except Exception as e:
        if pretrained:
            raise download_failed(f"timm {name}", e) from e
        raise ClusterFitError(f"timm could not create {name!r}: {type(e).__name__}: {e}") from e
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = stats_for(cfg.get("mean"), in_chans, pretrained)
    std = stats_for(cfg.get("std"), in_chans, pretrained)
    info = list(getattr(model, "feature_info", None) or [])
    reductions = {int(i["reduction"]) for i in info}
    if len(info) > 1 and len(reductions) == 1 and hasattr(model, "forward_intermediates"):
        trunk = TimmTokens(model, len(info))
        layers = {n: n for n in trunk.layer_names}
        return Backbone(trunk, int(model.num_features), layers, in_chans, mean, std)
    model.reset_classifier(0, "")  # the unpooled map; the Net pools it
    tracer_kwargs = {
        "leaf_modules": list(get_notrace_modules()),
        "autowrap_functions": list(get_notrace_functions()),
    }
    layers = _hierarchical_layers(model, info) if info else {}
    return Backbone(
        model,
        int(model.num_features),
        layers,
        in_chans=in_chans,
        mean=mean,
        std=std,
        tracer_kwargs=tracer_kwargs,
    )
