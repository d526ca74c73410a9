"""Checks before the first epoch: every setting that would otherwise fail after training.

A ClusterFit run trains N_pre, then N_cf (Yan et al., CVPR 2020, §3), before the probes (§4)
look at named layers; a bad architecture name, keyword, image size, pre-trained weights name or
layer name found only then costs the training. :func:`check` builds every network of the run on
the ``meta`` device (no memory, no compute) and runs a blank batch of the data's image size
through the layers that extraction and the probes will read, in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from clusterfit.artifacts import storage_error
from clusterfit.config import PretrainConfig
from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.models import Net, create_model
from clusterfit.models.net import POOL
from clusterfit.models.registry import MODULE_ARCH, check_arch_kwargs, check_pretrained
from clusterfit.stages import fit
from clusterfit.stages.context import Context


def _input_shape(ctx: Context) -> tuple[int, ...]:
    """(C, H, W) of what the networks see: the data's channels, its crop or its image size;
    (C, T, H, W) for video clips."""
    data = ctx.data()
    shape = [int(v) for v in data.images.shape[1:]]
    crop = getattr(data, "crop_size", None)
    if crop:
        shape[-2:] = [crop, crop]
    return tuple(shape)


def _skeleton(arch: str, kwargs: dict, in_chans: int, where: str) -> Net:
    """The architecture on the meta device (weights never materialised; on the CPU for a model
    whose construction needs real tensors)."""
    try:
        check_arch_kwargs(arch, kwargs)
        try:
            with torch.device("meta"):
                return create_model(arch, [2], in_chans=in_chans, **kwargs)
        except (NotImplementedError, RuntimeError):
            return create_model(arch, [2], in_chans=in_chans, **kwargs)
    except ClusterFitError as e:
        raise ConfigError(f"{where}: {e}") from None


def _try_layers(
    net: Net, layers: list[str], shape: tuple[int, ...], setting: str, where: str
) -> None:
    """Check that ``net`` has ``layers`` (named by ``setting``) and takes images of ``shape``."""
    missing = [name for name in layers if name not in net.layer_names]
    if missing:
        raise ConfigError(
            f"{setting}: {where} ({net.arch!r}) has no layer {missing}; its layers are "
            f"{net.layer_names}"
        )
    ref = next(iter(net.parameters()), net.prep.mean)
    h, w = shape[-2], shape[-1]
    if len(shape) - 1 != net.spatial_dims:
        kind = "video clips" if len(shape) == 4 else "images"
        raise ConfigError(
            f"{where} ({net.arch!r}) takes {'video clips' if net.spatial_dims == 3 else 'images'}"
            f" but the data are {kind}; use a "
            + ("video network (r2plus1d_narrow, r2plus1d_18)" if len(shape) == 4 else "2-D one")
        )
    x = torch.zeros((2, *shape), device=ref.device)
    try:
        with torch.no_grad():
            net.eval().intermediates(x, [n for n in layers if n != POOL] or [POOL])
            net.forward_features(x)
    except ClusterFitError as e:
        raise ConfigError(f"{where}: {e}") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{where} ({net.arch!r}) cannot take {h}x{w} images ({type(e).__name__}: {msg}); "
            "set data.image_size (and data.crop_size) to a size it takes, e.g. "
            "data.image_size=224, or for N_pre alone pretrain.input_size=224"
        ) from None


def _n_pre(ctx: Context, task: int, p: PretrainConfig, in_chans: int, where: str) -> Net:
    if p.objective == "module":
        if ctx.n_pre is None:
            raise ConfigError(
                "pretrain.objective=module means N_pre is the network passed to "
                "run_pipeline(cfg, n_pre=...) from Python; none was passed"
            )
        return ctx.n_pre
    if p.objective == "checkpoint":
        return ctx.load_model(_checkpoint_path(p))
    if p.objective == "pretrained":
        try:
            check_pretrained(p.arch, p.weights)
        except ClusterFitError as e:
            raise ConfigError(f"{where}: {e}") from None
    return _skeleton(p.arch, p.arch_kwargs, in_chans, f"{where}.arch={p.arch}")


def _checkpoint_path(p: PretrainConfig) -> Path:
    path = Path(p.checkpoint or "")
    if not path.is_file():
        raise ConfigError(f"pretrain.checkpoint: no such file: {path}")
    return path


def _writable(run_dir: Path) -> None:
    """A file can be made in the run folder (else one line naming it)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise storage_error(run_dir / ".write-check", e) from None


def check(ctx: Context) -> None:
    """Raise :class:`ConfigError` (one line naming the setting) for anything that cannot run."""
    cfg = ctx.cfg
    _writable(cfg.run_dir)
    shape = _input_shape(ctx)
    n = len(ctx.data())
    if cfg.cluster.method == "kmeans":
        for k in cfg.sweep_k or [cfg.cluster.k]:
            if k > n:
                raise ConfigError(
                    f"cluster.k={k} is more than the {n} images of the data; lower cluster.k"
                )
    probed = list(dict.fromkeys([*cfg.probe.layers, POOL]))
    for task, p in enumerate(ctx.pretrain_configs):
        where = "pretrain" if task == 0 else f"multitask.{task - 1}"
        net = _n_pre(ctx, task, p, shape[0], where)
        if p.input_size is not None:
            net.set_input_size(p.input_size)
        name = "N_pre" if task == 0 else f"N_pre_{task + 1}"
        _try_layers(net, [cfg.extract.layer], shape, "extract.layer", name)
        _try_layers(net, probed, shape, "probe.layers", name)
    arch, kwargs = fit.architecture(ctx)
    if arch != MODULE_ARCH:
        ncf = _skeleton(arch, kwargs, shape[0], f"fit.arch={arch}")
        _try_layers(ncf, probed, shape, "probe.layers", "N_cf")
