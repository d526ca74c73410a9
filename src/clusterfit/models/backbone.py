"""What a model family hands to :class:`~clusterfit.models.net.Net`: :class:`Backbone`, and the
:class:`LayerTrunk` contract for trunks whose named layers are not FX nodes (transformers).

The probe layers (paper §4, Tables 1-5: conv1, res2 .. res5) are named by one rule for every
family (:func:`stage_rule` states it); each family file maps its networks onto that rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clusterfit.errors import ClusterFitError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The probe-layer rule, as the README and ``clusterfit models`` state it.
LAYER_RULE = (
    "conv1 = the stem: the last feature map at 1/2 of the input resolution (or the first map, "
    "when the network has none at 1/2); res2, res3, res4 = the last feature map at 1/4, 1/8, "
    "1/16 (the output of each stage; when a network skips a resolution, the deepest map before "
    "it); res5 = the trunk's last feature map. Isotropic transformers (ViT: every block at one "
    "resolution) take the blocks at depth 0, 1/4, 1/2, 3/4 and the last one, their patch tokens "
    "laid out as a map (B x D x h x w); their 'pool' feature is the model's own (CLS or mean)."
)


@dataclass
class Backbone:
    """What a builder returns.

    trunk: normalised images -> B x feature_dim x *spatial (or B x feature_dim).
    layers: canonical name -> FX node/module name in ``trunk`` (for a :class:`LayerTrunk`, the
        canonical names it answers, mapped to themselves).
    mean, std: normalisation the (pre-trained) weights expect; None -> the Net default (0.5).
    """

    trunk: nn.Module
    feature_dim: int
    layers: dict[str, str]
    in_chans: int = 3
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    spatial_dims: int = 2
    tracer_kwargs: dict[str, Any] | None = field(default=None)


class LayerTrunk(nn.Module):
    """A trunk that computes its own named layers (no FX tracing).

    ``forward(x)``: normalised images B x C x H x W -> B x D (pooled the model's own way) or a
    feature map B x D x h x w. ``forward_layers(x, names)``: ``{name: B x C_l x h_l x w_l}`` for
    canonical names from :attr:`layer_names`, plus ``"pool"`` (= ``forward(x)``) when asked.
    """

    layer_names: tuple[str, ...] = ()

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def tokens_to_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens as a feature map: B x (prefix + h*w) x D -> B x D x h x w (prefix tokens,
    e.g. CLS, dropped)."""
    b, n, d = tokens.shape
    h, w = grid
    if n - prefix != h * w:
        raise ClusterFitError(f"{n - prefix} patch tokens do not form a {h}x{w} grid")
    return tokens[:, prefix:].transpose(1, 2).reshape(b, d, h, w)


def evenly_spaced(depth: int) -> dict[str, int]:
    """Block indices of the five probe layers of an isotropic network of ``depth`` blocks."""
    names = ("conv1", "res2", "res3", "res4", "res5")
    return {n: round(j * (depth - 1) / 4) for j, n in enumerate(names)}


def canonical_reduction(r: float) -> int:
    """The power of two nearest to a resolution reduction (37.3 -> 32, 17.2 -> 16)."""
    return 2 ** round(math.log2(r)) if r > 0 else 0


def stage_rule(stages: Sequence[tuple[str, float | None]]) -> dict[str, str]:
    """Apply the probe-layer rule (:data:`LAYER_RULE`) to a network's stage outputs.

    stages: (name, reduction of its output relative to the input; None when not a map), in
    execution order, the trunk's last map last. Returns ``{canonical name: stage name}``.
    """
    maps = [(n, canonical_reduction(r)) for n, r in stages if r]
    if not maps:
        raise ClusterFitError("the network produces no spatial feature map to probe")
    out: dict[str, str] = {}
    at_two = [n for n, r in maps if r == 2]
    out["conv1"] = at_two[-1] if at_two else maps[0][0]
    for name, r in (("res2", 4), ("res3", 8), ("res4", 16)):
        upto = [n for n, rr in maps if rr <= r]
        out[name] = upto[-1] if upto else maps[0][0]
    out["res5"] = maps[-1][0]
    return out


def stats_for(stats: Sequence[float] | None, in_chans: int, pretrained: bool) -> list[float] | None:
    """Per-channel statistics of pre-trained weights, averaged to one value for grey input."""
    if not pretrained or stats is None:
        return None
    vals = [float(v) for v in stats]
    return [sum(vals) / len(vals)] if in_chans == 1 else vals


def download_failed(what: str, error: Exception) -> ClusterFitError:
    """The one-line error for weights that could not be fetched (offline, or a bad name)."""
    return ClusterFitError(
        f"the pre-trained weights of {what} could not be downloaded "
        f"({type(error).__name__}: {error}); check the network connection, or pass a checkpoint "
        f"path instead of pretrained=True"
    )
