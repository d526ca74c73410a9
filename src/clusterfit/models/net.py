"""``Net``: the one backbone contract every ClusterFit network answers.

ClusterFit (Yan et al., CVPR 2020) trains a proxy network N_pre (Sec. 3.1), extracts its
penultimate features to cluster them (Sec. 3.2), trains N_cf from scratch on the cluster ids
(Sec. 3.2), and probes the frozen features of ``conv1``, ``res2`` .. ``res5`` of both (Sec. 4).
Every one of these steps talks to a network through the few calls of :class:`Net`:

``prep``
    channel adaptation (a 1-channel image fed to a 3-channel model is repeated to 3 channels; a
    3-channel image fed to a 1-channel model is averaged to grey), then normalisation by the
    ``mean`` / ``std`` buffers. Images enter the model as floats in [0, 1].
``trunk``
    image -> last feature map, B x D x h x w (or B x D for a trunk that pools itself).
``heads``
    ``nn.ModuleList`` of ``nn.Linear(feature_dim * patches, head_size)``, one per head (several
    heads: ClusterFit's multi-task N_pre, or one per k of the k-means ablations).

``forward(x)`` returns the list of logits per head; ``forward_features(x)`` the global-average-
pooled features B x D; ``intermediates(x, layers)`` named feature maps through torchvision's FX
feature extraction.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clusterfit.errors import ClusterFitError
from clusterfit.models.backbone import LayerTrunk

#: Canonical layer names, shallow to deep, as in the paper's probing tables.
CANONICAL_LAYERS: tuple[str, ...] = ("conv1", "res2", "res3", "res4", "res5")
#: The pooled, penultimate feature (B x feature_dim); available for every model.
POOL = "pool"


def _as_stat(values: Sequence[float] | float | None, in_chans: int, name: str) -> list[float]:
    if values is None:
        values = [0.5] * in_chans
    if isinstance(values, int | float):
        values = [float(values)]
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * in_chans
    if len(vals) != in_chans:
        raise ClusterFitError(
            f"{name} has {len(vals)} values but the model takes {in_chans} channels; "
            f"give one value or {in_chans}"
        )
    if name == "std" and any(v <= 0 for v in vals):
        raise ClusterFitError(f"std must be positive, got {vals}")
    return vals


class Prep(nn.Module):
    """Resizing, channel adaptation and normalisation, the first step of every :class:`Net`.

    ``forward(x)``: x float B x C x *spatial in [0, 1] with C = 1 or ``in_chans`` (or 3 when
    ``in_chans`` is 1) -> B x in_chans x *spatial, ``(x - mean) / std`` per channel. With
    ``input_size`` S set, the frames are first resized (bilinear; antialiased when shrinking
    images) to S x S (video clips keep their T frames): a pre-trained network sees the side it
    was trained at whatever the data's size (e.g. an ImageNet network at 224 on 32 px images).
    """

    def __init__(
        self,
        in_chans: int,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.in_chans = int(in_chans)
        self.spatial_dims = int(spatial_dims)
        self.channels_last = False
        # Python copies for model_args: readable without a device sync (or on the meta device).
        self.mean_values = _as_stat(mean, self.in_chans, "mean")
        self.std_values = _as_stat(std, self.in_chans, "std")
        self.register_buffer("mean", torch.tensor(self.mean_values, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(self.std_values, dtype=torch.float32))
        self.input_size: int | None = None

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """x B x C x *spatial -> B x C x (T x) S x S for ``input_size`` S (as is when unset or
        already that size)."""
        s = self.input_size
        if s is None or tuple(x.shape[-2:]) == (s, s):
            return x
        if self.spatial_dims == 2:
            shrink = min(x.shape[-2:]) > s
            return F.interpolate(x, size=(s, s), mode="bilinear", antialias=shrink)
        return F.interpolate(x, size=(x.shape[2], s, s), mode="trilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resize(x)
        c = x.shape[1]
        if c != self.in_chans:
            if c == 1:
                x = x.expand(-1, self.in_chans, *x.shape[2:])
            elif self.in_chans == 1 and c == 3:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ClusterFitError(
                    f"input has {c} channels but the model takes {self.in_chans}; only 1 -> "
                    f"{self.in_chans} (repeat) and 3 -> 1 (grey) are adapted"
                )
        shape = (1, self.in_chans) + (1,) * self.spatial_dims
        x = (x - self.mean.view(shape)) / self.std.view(shape)
        if self.channels_last:
            fmt = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        return x

    def extra_repr(self) -> str:
        size = "" if self.input_size is None else f", input_size={self.input_size}"
        return f"in_chans={self.in_chans}, spatial_dims={self.spatial_dims}{size}"


def _make_heads(feature_dim: int, patches: int, head_sizes: Iterable[int]) -> nn.ModuleList:
    sizes = [int(h) for h in head_sizes]
    if any(h < 1 for h in sizes):
        raise ClusterFitError(f"head sizes must be positive ints, got {sizes}")
    return nn.ModuleList(nn.Linear(feature_dim * patches, h) for h in sizes)


def global_pool(y: torch.Tensor) -> torch.Tensor:
    """Global average pooling: B x D x *spatial -> B x D (a B x D input is returned as is)."""
    if y.ndim == 2:
        return y
    return y.mean(dim=tuple(range(2, y.ndim)))


class Net(nn.Module):
    """``prep`` -> ``trunk`` -> ``heads``; see the module docstring.

    Build one with :func:`clusterfit.models.create_model` (registered architectures),
    :func:`clusterfit.models.from_module` (any ``nn.Module``) or
    :func:`clusterfit.models.load_model` (a checkpoint).

    Args:
        trunk: maps normalised images B x in_chans x *spatial to B x feature_dim x *spatial' (or
            B x feature_dim).
        feature_dim: D, the channels of the trunk output.
        layers: canonical layer name (``conv1``, ``res2`` .. ``res5``) -> FX node or module name in
            ``trunk`` (as listed by ``torchvision.models.feature_extraction.get_graph_node_names``).
        head_sizes: output size of each linear head.
        in_chans: channels the trunk takes.
        patches: P > 1 makes ``forward`` take B x P x C x h x w (Jigsaw, Sec. 4.2).
        mean, std: per-channel normalisation (one value or ``in_chans`` values); default 0.5 / 0.5.
        arch, arch_kwargs: what :func:`~clusterfit.models.build_from_args` needs to rebuild it.
        spatial_dims: 2 for images, 3 for video clips (B x C x T x H x W).
        tracer_kwargs: extra arguments for the FX tracer (leaf modules of timm models).
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        feature_dim: int,
        layers: dict[str, str] | None = None,
        head_sizes: Iterable[int] = (),
        in_chans: int = 3,
        patches: int = 1,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        arch: str = "module",
        arch_kwargs: dict[str, Any] | None = None,
        spatial_dims: int = 2,
        tracer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        layers = dict(layers or {})
        bad = [k for k in layers if k not in CANONICAL_LAYERS]
        if bad:
            raise ClusterFitError(
                f"unknown canonical layer name(s) {bad}; use {list(CANONICAL_LAYERS)} "
                f"(and map each to a node of the trunk)"
            )
        if patches < 1:
            raise ClusterFitError(f"patches must be >= 1, got {patches}")
        if patches > 1 and spatial_dims != 2:
            raise ClusterFitError("patches > 1 (Jigsaw) is only supported for image models")
        self.prep = Prep(in_chans, mean, std, spatial_dims)
        self.trunk = trunk
        self.heads = _make_heads(int(feature_dim), int(patches), head_sizes)
        self._feature_dim = int(feature_dim)
        self._patches = int(patches)
        self._layers = {k: layers[k] for k in CANONICAL_LAYERS if k in layers}
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.spatial_dims = int(spatial_dims)
        self._tracer_kwargs = tracer_kwargs
        # FX extractors, keyed by the tuple of node names. A plain dict, so not part of
        # state_dict(), of .children() or of pickling (see __getstate__).
        self._extractors: dict[tuple[str, ...], tuple[tuple[int, ...], nn.Module]] = {}
        self._nodes: tuple[tuple[int, ...], list[str]] | None = None
        # per tuple of layer names: (trunk signature, name -> node, node -> name asked, nodes)
        self._plans: dict[tuple[str, ...], tuple] = {}

    # ---------------------------------------------------------------- description
    @property
    def feature_dim(self) -> int:
        """D, the size of ``forward_features``' output (channels of the last feature map)."""
        return self._feature_dim

    @property
    def patches(self) -> int:
        """P: number of patches per item ``forward`` takes (1: plain images)."""
        return self._patches

    @property
    def in_chans(self) -> int:
        """Channels the trunk takes (inputs with 1 or 3 channels are adapted by ``prep``)."""
        return self.prep.in_chans

    @property
    def input_size(self) -> int | None:
        """S when every input is resized to S x S before the trunk (:class:`Prep`), else None."""
        return self.prep.input_size

    def set_input_size(self, size: int | None) -> Net:
        """Resize every input to ``size`` x ``size`` before the trunk (None: the data's size);
        kept in ``model_args``, so checkpoints restore it. Returns the network."""
        if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
            raise ClusterFitError(f"input_size must be a positive int or None, got {size!r}")
        self.prep.input_size = None if size is None else int(size)
        return self

    @property
    def head_sizes(self) -> list[int]:
        """Output size of each head."""
        return [int(h.out_features) for h in self.heads]

    @property
    def layer_names(self) -> list[str]:
        """Canonical names ``intermediates`` accepts, shallow to deep, ending with ``"pool"``."""
        return [*self._layers, POOL]

    @property
    def layer_nodes(self) -> dict[str, str]:
        """Canonical layer name -> FX node name in ``trunk``."""
        return dict(self._layers)

    @property
    def model_args(self) -> dict[str, Any]:
        """JSON-able description; ``build_from_args(net.model_args)`` rebuilds the architecture."""
        return {
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "in_chans": self.in_chans,
            "head_sizes": self.head_sizes,
            "patches": self.patches,
            "mean": list(self.prep.mean_values),
            "std": list(self.prep.std_values),
            **({} if self.input_size is None else {"input_size": self.input_size}),
        }

    # ---------------------------------------------------------------- computation
    def _check_input(self, x: torch.Tensor, patches: int) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            what = x.dtype if torch.is_tensor(x) else type(x).__name__
            raise ClusterFitError(
                f"Net takes float images in [0, 1], got {what}; convert with images.float() / 255"
            )
        want = 2 + self.spatial_dims + (1 if patches > 1 else 0)
        if x.ndim != want:
            if patches > 1:
                shape = f"B x {patches} x C x h x w"
            elif self.spatial_dims == 2:
                shape = "B x C x H x W"
            else:
                shape = "B x C x T x H x W"
            raise ClusterFitError(f"expected a {want}-d input {shape}, got {tuple(x.shape)}")
        if patches > 1 and x.shape[1] != patches:
            raise ClusterFitError(
                f"this model takes {patches} patches per item, got {x.shape[1]} "
                f"(input {tuple(x.shape)})"
            )
        return x

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        f = global_pool(self.trunk(self.prep(x)))
        if f.ndim != 2 or f.shape[1] != self._feature_dim:
            raise ClusterFitError(
                f"the trunk gives features of shape {tuple(f.shape)} after pooling, but "
                f"feature_dim is {self._feature_dim}"
            )
        return f

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last feature map.

        x: float B x C x H x W in [0, 1] (full images, also when ``patches`` > 1) -> B x D.
        """
        return self._pooled(self._check_input(x, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits per head.

        x: float B x C x H x W in [0, 1], or B x P x C x h x w when ``patches`` = P > 1 (each patch
        goes through the shared trunk and is pooled; the P vectors are concatenated to B x P*D).
        Returns a list with one B x head_size tensor per head.
        """
        x = self._check_input(x, self._patches)
        if self._patches > 1:
            b, p = x.shape[:2]
            feats = self._pooled(x.reshape(b * p, *x.shape[2:])).reshape(b, p * self._feature_dim)
        else:
            feats = self._pooled(x)
        return [head(feats) for head in self.heads]

    # ---------------------------------------------------------------- intermediates
    def _trunk_signature(self) -> tuple[int, ...]:
        """Identity of the trunk's parameter and buffer objects (changes when one is replaced)."""
        return tuple(id(t) for t in self.trunk.parameters()) + tuple(
            id(t) for t in self.trunk.buffers()
        )

    def _graph_nodes(self) -> list[str]:
        """FX node names of the trunk in eval mode (traced once, cached)."""
        signature = self._trunk_signature()
        if self._nodes is None or self._nodes[0] != signature:
            from torchvision.models.feature_extraction import get_graph_node_names

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    _, eval_nodes = get_graph_node_names(
                        self.trunk, tracer_kwargs=self._tracer_kwargs
                    )
            except Exception as e:
                raise ClusterFitError(
                    f"the trunk of {self.arch!r} cannot be traced by torch.fx, so its named "
                    f"layers are not available: {type(e).__name__}: {e}"
                ) from e
            self._nodes = (signature, list(eval_nodes))
        return self._nodes[1]

    def _resolve_node(self, query: str) -> str:
        """The node a query names: itself, or the last node inside the module of that name."""
        nodes = self._graph_nodes()
        pattern = re.compile(rf"^{re.escape(query)}(\.|$)")
        matches = [n for n in nodes if pattern.match(n)]
        if not matches:
            raise ClusterFitError(
                f"node {query!r} does not exist in the trunk of {self.arch!r}; nodes are listed "
                f"by torchvision.models.feature_extraction.get_graph_node_names(net.trunk)"
            )
        return matches[-1]

    def _extractor(
        self, nodes: tuple[str, ...], signature: tuple[int, ...] | None = None
    ) -> nn.Module:
        # The GraphModule shares the trunk's leaf modules (hence parameters and buffers), so it
        # follows in-place updates (optimizer steps, load_state_dict, .to()). If a parameter or
        # buffer object was replaced, the signature changes and the extractor is rebuilt.
        signature = signature or self._trunk_signature()
        cached = self._extractors.get(nodes)
        if cached is not None and cached[0] == signature:
            return cached[1]
        from torchvision.models.feature_extraction import create_feature_extractor

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                extractor = create_feature_extractor(
                    self.trunk,
                    return_nodes={n: n for n in nodes},
                    tracer_kwargs=self._tracer_kwargs,
                )
        except Exception as e:
            raise ClusterFitError(
                f"could not build a feature extractor for nodes {list(nodes)} of {self.arch!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
        self._extractors[nodes] = (signature, extractor)
        return extractor

    def intermediates(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Named intermediate features (the layers probed in the paper, Sec. 4).

        x: float B x C x H x W in [0, 1] (full images; B x C x T x H x W for video models).
        layers: names from :attr:`layer_names`: ``conv1``, ``res2`` .. ``res5`` give feature
        maps B x C_l x H_l x W_l (stem output and the output of each residual stage); ``pool``
        gives B x feature_dim, the same as ``forward_features``.
        Returns a dict name -> tensor in the order asked.
        """
        layers = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
        valid = self.layer_names
        bad = [name for name in layers if name not in valid]
        if bad:
            raise ClusterFitError(
                f"unknown layer(s) {bad} for model {self.arch!r}; valid names: {valid}"
            )
        x = self._check_input(x, 1)
        if layers == [POOL]:
            return {POOL: self._pooled(x)}
        if isinstance(self.trunk, LayerTrunk):
            out = self.trunk.forward_layers(self.prep(x), layers)
            return {name: out[name] for name in layers}
        children = self._sequential_children(layers)
        if children is not None:
            return self._sequential_intermediates(self.prep(x), layers, children)
        # Several names may denote one node (res5 and the trunk output behind pool): ask the
        # extractor for each node once, by the first name that resolves to it. The names are
        # resolved once per tuple of layers (and again if the trunk's tensors are replaced),
        # not at every batch.
        signature = self._trunk_signature()
        plan = self._plans.get(tuple(layers))
        if plan is None or plan[0] != signature:
            query = {name: (None if name == POOL else self._layers[name]) for name in layers}
            resolved = {
                name: self._graph_nodes()[-1] if q is None else self._resolve_node(q)
                for name, q in query.items()
            }
            first: dict[str, str] = {}
            for name, node in resolved.items():
                first.setdefault(node, node if query[name] is None else query[name])
            plan = (signature, resolved, first, tuple(sorted(first.values())))
            self._plans[tuple(layers)] = plan
        _, resolved, first, nodes = plan
        extractor = self._extractor(nodes, signature)
        extractor.train(self.training)
        out = extractor(self.prep(x))
        result: dict[str, torch.Tensor] = {}
        for name, node in resolved.items():
            y = out[first[node]]
            result[name] = global_pool(y) if name == POOL else y
        return result

    def _sequential_children(self, layers: list[str]) -> list[tuple[str, nn.Module]] | None:
        """The trunk's children when it is a plain ``nn.Sequential`` (its own ``forward``) and
        every asked layer is the output of one of them (or ``pool``); else None."""
        trunk = self.trunk
        if not isinstance(trunk, nn.Sequential) or type(trunk).forward is not nn.Sequential.forward:
            return None
        children = list(trunk.named_children())
        names = {name for name, _ in children}
        if not children or any(n != POOL and self._layers[n] not in names for n in layers):
            return None
        return children

    def _sequential_intermediates(
        self, h: torch.Tensor, layers: list[str], children: list[tuple[str, nn.Module]]
    ) -> dict[str, torch.Tensor]:
        """:meth:`intermediates` of a Sequential trunk: its children run one after the other,
        up to the last one asked for, and their outputs are kept (the same tensors the FX
        extractor returns, without tracing the trunk)."""
        wanted = {self._layers[n] for n in layers if n != POOL}
        last = (
            len(children) - 1
            if POOL in layers
            else max((i for i, (name, _) in enumerate(children) if name in wanted), default=-1)
        )
        kept: dict[str, torch.Tensor] = {}
        for name, module in children[: last + 1]:
            h = module(h)
            if name in wanted:
                kept[name] = h
        return {n: global_pool(h) if n == POOL else kept[self._layers[n]] for n in layers}

    # ---------------------------------------------------------------- modification
    def reset_heads(self, head_sizes: Iterable[int], patches: int = 1) -> Net:
        """Replace the heads by fresh ``nn.Linear(feature_dim * patches, size)`` layers.

        Used to put cluster-id heads on N_cf, or a fresh head for a new objective.
        Returns self.
        """
        if patches < 1:
            raise ClusterFitError(f"patches must be >= 1, got {patches}")
        if patches > 1 and self.spatial_dims != 2:
            raise ClusterFitError("patches > 1 (Jigsaw) is only supported for image models")
        ref = next(iter(self.trunk.parameters()), self.prep.mean)
        heads = _make_heads(self._feature_dim, int(patches), head_sizes)
        self.heads = heads.to(device=ref.device, dtype=ref.dtype)
        self._patches = int(patches)
        return self

    def channels_last(self) -> Net:
        """Store weights and feed inputs in channels-last memory format; returns self.

        Faster convolutions on CPU (oneDNN) and on tensor cores; the results are the same.
        """
        fmt = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        self.to(memory_format=fmt)
        self.prep.channels_last = True
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Drop the cached FX extractors: they hold references into the trunk and are rebuilt on
        # demand, so copies (copy.deepcopy, pickle) stay independent of the original.
        state = self.__dict__.copy()
        state["_extractors"] = {}
        state["_plans"] = {}
        state["_nodes"] = None
        return state

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, feature_dim={self._feature_dim}, patches={self._patches}, "
            f"head_sizes={self.head_sizes}"
        )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those with requires_grad if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``, weights untouched.

    The random-init floor of the probes (paper §4: "Random" rows): a freshly initialised
    network's BatchNorm layers hold mean 0 / variance 1, so in eval mode a deep BatchNorm-heavy
    network (EfficientNet, MobileNet) passes on activations of exploding or vanishing scale and
    its deep layers probe at chance. Re-estimated statistics (a cumulative average over all the
    batches, ``momentum=None``) give the floor a network of the same weights would have after
    seeing the data. batches: float images B x C x H x W in [0, 1] on the net's device.
    Returns the number of images seen (0 when the network has no BatchNorm).
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = net.training
    momenta = [m.momentum for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x in batches:
            net.forward_features(x) if isinstance(net, Net) else net(x)
            seen += int(x.shape[0])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)
    return seen


def channels_last_is_safe(net: nn.Module, device: torch.device | str) -> bool:
    """Whether training ``net`` in channels-last layout is safe on ``device``.

    On the CPU, the oneDNN backward pass of a 1 x 1 convolution with stride 2 and fewer than 16
    input channels crashes the process (segmentation fault; measured with torch 2.14 on inputs
    of 64 px and more, e.g. the shortcut of a width-8 ``resnet_cifar``). Such networks train in
    the contiguous layout there; everything else (and everything on a GPU) may use channels-last.
    """
    if torch.device(device).type != "cpu":
        return True
    return not any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and max(m.stride) > 1
        and m.in_channels < 16
        for m in net.modules()
    )
