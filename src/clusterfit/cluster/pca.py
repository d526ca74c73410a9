"""PCA before k-means (DeepCluster-style reduction / whitening; ClusterFit §3 clustering step).

:func:`fit_pca` fits the principal axes of the training rows in two streamed passes (mean, then
covariance), with sums all-reduced under torch.distributed so every rank gets the same
:class:`PCA`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clusterfit import distributed as cfdist
from clusterfit.cluster.rows import RawRows, RowSource

__all__ = ["PCA", "fit_pca"]


@dataclass
class PCA:
    """A fitted PCA: ``y = (x - mean) @ components.T``, divided by ``sqrt(variance)`` if whitened.

    mean: D float32; components: d x D float32 (principal axes, by decreasing variance; sign
    fixed so that each axis's largest-magnitude entry is positive); explained_variance: d float64;
    whiten: whether outputs are scaled to unit variance (``variance + 1e-8·max variance``).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def projection(self) -> np.ndarray:
        """The d x D matrix applied to centred rows (components, scaled when whitened)."""
        if not self.whiten:
            return self.components
        var = self.explained_variance
        scale = 1.0 / np.sqrt(var + 1e-8 * max(float(var.max()), 1e-30))
        return (self.components * scale[:, None]).astype(np.float32)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float32 B x D tensor to B x d (on x's device)."""
        key = str(x.device)
        if key not in self._cache:
            self._cache[key] = (
                torch.from_numpy(np.asarray(self.mean, dtype=np.float32)).to(x.device),
                torch.from_numpy(np.ascontiguousarray(self.projection.T, np.float32)).to(x.device),
            )
        mean, proj_t = self._cache[key]
        return (x - mean) @ proj_t

    def transform(self, X: Any, chunk_size: int = 65536) -> np.ndarray:
        """Map X (N x D: array, memmap, tensor) to N x d float32 numpy, ``chunk_size`` rows at a
        time."""
        rows = RawRows(X)
        out = np.empty((rows.n, self.components.shape[0]), dtype=np.float32)
        for a in range(0, rows.n, chunk_size):
            b = min(a + chunk_size, rows.n)
            out[a:b] = self.apply(rows.read(a, b).cpu()).numpy()
        return out


def fit_pca(src: RowSource, n_total: int, dim: int, whiten: bool, device: torch.device) -> PCA:
    """PCA of the rows of ``src`` on every rank (n_total rows in all): two passes, sums all-reduced.

    Covariance of centred rows, accumulated in float32 per chunk and float64 across chunks/ranks;
    eigen-decomposition in float64.
    """
    total: torch.Tensor | None = None
    for _, x in src.raw_chunks():
        s = x.sum(0, dtype=torch.float64)
        total = s if total is None else total + s
    d = _src_dim(src, total)
    if total is None:
        total = torch.zeros(d, dtype=torch.float64, device=device)
    mean = cfdist.all_reduce_sum(total.to(device)) / n_total
    mean32 = mean.float()
    cov = torch.zeros((d, d), dtype=torch.float64, device=device)
    for _, x in src.raw_chunks():
        xc = x - mean32
        cov += (xc.T @ xc).double()
    cov = cfdist.all_reduce_sum(cov) / max(n_total - 1, 1)
    evals, evecs = np.linalg.eigh(cov.cpu().numpy())
    order = np.argsort(evals)[::-1][:dim]
    var = np.clip(evals[order], 0.0, None)
    comps = evecs[:, order].T
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return PCA(
        mean=mean.cpu().numpy().astype(np.float32),
        components=comps.astype(np.float32),
        explained_variance=var,
        whiten=whiten,
    )


def _src_dim(src: RowSource, total: torch.Tensor | None) -> int:
    if total is not None:
        return int(total.shape[0])
    return int(src._read(0, 0).shape[1])
