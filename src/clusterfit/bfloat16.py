"""bfloat16 on the CPU: where it is native, and its raw bits for the numba kernels (the
k-means screen, :mod:`clusterfit.cluster.screen`, and the probes' fused SGD step,
:mod:`clusterfit.evaluate.linear`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["amx_available", "bits"]


def bits(t: torch.Tensor) -> np.ndarray:
    """The raw 16-bit patterns of a CPU bfloat16 tensor, as a numpy uint16 view (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def amx_available() -> bool:
    """Whether torch multiplies bfloat16 matrices on this CPU's AMX tiles (5-8x its float32
    rate on the reference machine at k-means shapes)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
