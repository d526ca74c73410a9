"""Figures of one run besides the probe plots: cluster sizes and training curves.

* :func:`size_chart`: the K cluster sizes from largest to smallest, and their histogram (how even
  the pseudo-labels of N_cf are; Yan et al., CVPR 2020, §3.1).
* :func:`training_curves`: loss, train accuracy and learning rate per epoch of every network
  trained in the run (N_pre, N_cf, the baselines), read from each stage's ``log.jsonl``.

Drawn with matplotlib's object API on the Agg canvas (pyplot's global state is not touched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CURVES", "size_chart", "training_curves"]

#: the panels of the training figure: log key -> axis label
CURVES = {"loss": "training loss", "train_acc": "train accuracy (%)", "lr": "learning rate"}


def _figure(cols: int, width: float = 4.6, height: float = 3.2) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, squeeze=False).ravel().tolist()


def size_chart(sizes: np.ndarray, path: Path, title: str = "") -> Path:
    """Two panels: cluster sizes sorted (largest first), and the histogram of sizes.

    sizes: (K,) members per cluster.
    """
    s = np.sort(np.asarray(sizes))[::-1]
    fig, (ax1, ax2) = _figure(2)
    # one filled step curve rather than K bars: as fast for K = 1000 as for K = 10
    ax1.fill_between(np.arange(len(s) + 1), np.append(s, s[-1:]), step="post", color="C0")
    ax1.set_xlim(0, len(s))
    ax1.axhline(s.mean(), color="C3", linestyle="--", linewidth=1, label=f"mean {s.mean():.1f}")
    ax1.set_xlabel("clusters, largest to smallest")
    ax1.set_ylabel("members")
    ax1.legend(fontsize=8)
    ax2.hist(s, bins=min(30, max(5, len(s) // 3)), color="C0")
    ax2.set_xlabel("cluster size (members)")
    ax2.set_ylabel("clusters")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    return path


def training_curves(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """One panel per :data:`CURVES` key, one line per network (``logs``: name -> epochs)."""
    series = {name: rows for name, rows in logs.items() if rows}
    if not series:
        return None
    keys = [k for k in CURVES if any(k in r for rows in series.values() for r in rows)]
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for i, (name, rows) in enumerate(series.items()):
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(CURVES[key])
        ax.set_title(CURVES[key], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    return path
