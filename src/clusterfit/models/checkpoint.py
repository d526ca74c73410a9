"""Checkpoints that describe themselves: ``model_args`` beside the weights.

The ClusterFit pipeline (Yan et al., CVPR 2020, Sec. 3) hands networks from stage to stage
(N_pre -> feature extraction -> N_cf -> probing) as files. A checkpoint is a dict

``{"model_args": Net.model_args, "state_dict": Net.state_dict(), **extra}``

written atomically (temporary file in the same folder, then ``os.replace``), so a reader sees
either the old file or the new one, never half of one. It is read with
``torch.load(weights_only=True)``: ``extra`` must hold only tensors, numbers, strings, lists,
tuples and dicts of those (an optimizer's ``state_dict()`` qualifies).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clusterfit.artifacts import atomic_write
from clusterfit.errors import ClusterFitError
from clusterfit.models.net import Net
from clusterfit.models.registry import build_from_args


def unwrap(net: nn.Module) -> Net:
    """The :class:`Net` inside a DistributedDataParallel / ``torch.compile`` wrapper (or itself)."""
    seen = 0
    while not isinstance(net, Net) and seen < 4:
        inner = getattr(net, "module", None) or getattr(net, "_orig_mod", None)
        if inner is None:
            break
        net, seen = inner, seen + 1
    if not isinstance(net, Net):
        raise ClusterFitError(
            f"save_checkpoint needs a clusterfit Net (from create_model / from_module), got "
            f"{type(net).__name__}"
        )
    return net


def save_checkpoint(path: str | os.PathLike[str], net: nn.Module, **extra: Any) -> Path:
    """Write ``{"model_args", "state_dict", **extra}`` to ``path`` atomically; returns the path.

    ``net`` may be wrapped in DistributedDataParallel or ``torch.compile``. Tensors are stored as
    they are (move them to CPU first if the file must load without that device).
    """
    path = Path(path)
    reserved = {"model_args", "state_dict"} & set(extra)
    if reserved:
        raise ClusterFitError(f"save_checkpoint: {sorted(reserved)} are reserved keys")
    net = unwrap(net)
    payload = {"model_args": net.model_args, "state_dict": net.state_dict(), **extra}

    def write(tmp: Path) -> None:
        # Serialised in memory, then written with a loop that finishes partial writes: a
        # signal (a scheduler's preemption warning) that interrupts the write of a file torch
        # streams into leaves a short write that torch reports as a failure.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getbuffer()
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    atomic_write(path, write)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint dict (``torch.load(..., weights_only=True)``).

    Raises ClusterFitError naming the file when it is missing, unreadable, or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ClusterFitError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ClusterFitError(
            f"checkpoint {str(path)!r} could not be read ({type(e).__name__}: {e}); the file is "
            f"corrupt, truncated, or not a torch checkpoint"
        ) from e
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ClusterFitError(
            f"{str(path)!r} is not a clusterfit checkpoint: expected keys 'model_args' and "
            f"'state_dict', found {keys}"
        )
    return ckpt


def load_model(
    path: str | os.PathLike[str],
    module_factory: Callable[[], nn.Module] | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> Net:
    """Rebuild a :class:`Net` from a checkpoint and load its weights; returned in eval mode.

    ``module_factory`` is needed only for models wrapped with ``from_module`` (arch
    ``"module"``): a callable returning a fresh instance of the wrapped module, whose weights the
    checkpoint then fills in.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    try:
        net = build_from_args(ckpt["model_args"], module_factory=module_factory)
    except ClusterFitError as e:
        raise ClusterFitError(f"checkpoint {str(path)!r}: {e}") from e
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ClusterFitError(
            f"checkpoint {str(path)!r}: its weights do not fit the model rebuilt from its "
            f"model_args ({e})"
        ) from e
    return net.to(map_location).eval()
