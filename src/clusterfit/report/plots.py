"""Figures of the ClusterFit paper (Yan et al., CVPR 2020) from probe result records.

Each figure is drawn only when the records contain its sweep; one PNG per (target, protocol,
metric):

* ``layers_*.png`` (Fig. 4): accuracy of every probed layer (conv1 .. res5), one line per model
  (N_pre, N_cf, random, ...), when records cover two or more layers.
* ``k_*.png`` (Tables 4, 5, 7): accuracy against the number of clusters K, one panel per layer;
  models without a K (N_pre, random) are drawn as dashed horizontal baselines.
* ``noise_*.png`` (Fig. 3): accuracy against the label noise p of N_pre's training labels,
  N_pre and N_cf lines, one panel per layer.
* ``shots_*.png``: low-shot accuracy against the labelled examples per class.

Points are the mean over seeds, error bars (and baseline bands) one standard deviation. Figures
are drawn with matplotlib's object API on the Agg canvas: pyplot's global backend is not touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clusterfit.report.tables import Aggregate, aggregate, layer_rank

__all__ = ["SWEEPS", "make_plots"]

# sweep name -> (record key on the x axis, axis label, caption)
SWEEPS: dict[str, tuple[str, str, str]] = {
    "layers": ("layer", "layer", "Accuracy per layer (paper Fig. 4)"),
    "k": ("k", "number of clusters K", "Accuracy against K (paper Tables 4, 5, 7)"),
    "noise": ("label_noise", "label noise p", "Accuracy against label noise (paper Fig. 3)"),
    "shots": ("shots", "labelled examples per class", "Low-shot accuracy"),
}
_FIGURE_KEYS = ("target", "protocol", "metric")
_SERIES_KEYS = ("model", "objective", "k", "label_noise", "shots")
_SHORT = {"objective": "", "k": "K=", "label_noise": "p=", "shots": "shots="}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "x"


def _label(key: dict[str, Any], varying: list[str]) -> str:
    parts = [str(key["model"])]
    for k in varying:
        if k != "model" and key.get(k) is not None:
            v = key[k]
            parts.append(f"{_SHORT[k]}{v:g}" if isinstance(v, float) else f"{_SHORT[k]}{v}")
    return parts[0] + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


def _varying(aggs: list[Aggregate], keys: Iterable[str]) -> list[str]:
    return [k for k in keys if len({str(a.key.get(k)) for a in aggs}) > 1]


def _new_figure(n_panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _palette(n: int) -> list[Any]:
    """n colours, all distinct up to 20: matplotlib's default cycle (C0..C9) for up to 10
    series, beyond that ``tab20``'s ten dark hues then their ten light shades (the default
    cycle repeats its colours from the 11th on)."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors  # pairs (dark, light) of ten hues
    order = [*tab20[0::2], *tab20[1::2]]  # the ten dark hues first, then their light shades
    return [order[i % 20] for i in range(n)]


def _legend(ax: Any, entries: int) -> None:
    """The legend inside the axes for a few entries; beside them (to the right) for more than
    six, where an inside legend covers the lines."""
    if entries > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)


def _series(aggs: list[Aggregate], exclude: str) -> dict[tuple, list[Aggregate]]:
    out: dict[tuple, list[Aggregate]] = {}
    for a in aggs:
        key = tuple(str(a.key.get(k)) for k in _SERIES_KEYS if k != exclude)
        out.setdefault(key, []).append(a)
    return out


def _layer_figure(aggs: list[Aggregate], path: Path, title: str, metric: str) -> Path | None:
    # Only models probed at two or more layers make a line of this figure.
    series = [m for m in _series(aggs, exclude="").values() if len(m) >= 2]
    if not series:
        return None
    layers = sorted({a.key["layer"] for m in series for a in m}, key=layer_rank)
    fig, (ax,) = _new_figure(1)
    varying = _varying([a for m in series for a in m], _SERIES_KEYS)
    palette = _palette(len(series))
    for i, members in enumerate(series):
        members = sorted(members, key=lambda a: layer_rank(a.key["layer"]))
        xs = [layers.index(a.key["layer"]) for a in members]
        ax.errorbar(
            xs,
            [a.mean for a in members],
            yerr=[a.std for a in members],
            marker="o",
            capsize=3,
            color=palette[i],
            label=_label(members[0].key, varying),
        )
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, len(series))
    fig.savefig(path, dpi=100)
    return path


def _sweep_figure(
    aggs: list[Aggregate], x_key: str, x_label: str, path: Path, title: str, metric: str
) -> Path | None:
    """One panel per layer whose records sweep ``x_key`` over two or more values."""
    by_layer: dict[str, list[Aggregate]] = {}
    for a in aggs:
        by_layer.setdefault(a.key["layer"], []).append(a)
    panels = []
    for layer in sorted(by_layer, key=layer_rank):
        series = _series(by_layer[layer], exclude=x_key)
        swept = [s for s in series.values() if len({a.key[x_key] for a in s} - {None}) >= 2]
        if swept:
            panels.append(layer)
    if not panels:
        return None
    fig, axes = _new_figure(len(panels))
    varying = _varying(aggs, [k for k in _SERIES_KEYS if k != x_key])
    for ax, layer in zip(axes, panels, strict=True):
        xs_all: set[float] = set()
        groups = list(_series(by_layer[layer], exclude=x_key).values())
        lines = [
            sorted((a for a in m if a.key[x_key] is not None), key=lambda a: a.key[x_key])
            for m in groups
        ]
        lines = [pts for pts in lines if pts]
        baselines = [a for m in groups for a in m if a.key[x_key] is None]
        colors = iter(_palette(len(lines) + len(baselines)))
        for pts in lines:
            xs = [a.key[x_key] for a in pts]
            xs_all.update(xs)
            ax.errorbar(
                xs,
                [a.mean for a in pts],
                yerr=[a.std for a in pts],
                marker="o",
                capsize=3,
                color=next(colors),
                label=_label(pts[0].key, varying),
            )
        for a in baselines:
            color = next(colors)
            ax.axhline(
                a.mean, linestyle="--", linewidth=1.2, color=color, label=_label(a.key, varying)
            )
            if a.std > 0:
                ax.axhspan(a.mean - a.std, a.mean + a.std, color=color, alpha=0.12)
        if x_key in ("k", "shots") and xs_all and min(xs_all) > 0:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log", base=2 if x_key == "shots" else 10)
            ticks = sorted(xs_all)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{title} — {layer}", fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, len(lines) + len(baselines))
    fig.savefig(path, dpi=100)
    return path


def make_plots(records: Any, out_dir: str | Path) -> list[Path]:
    """Write the PNG figures that the records support (see the module docstring).

    Args:
        records: result records (list, or a ``{"records": [...]}`` document), possibly from
            several runs; records differing only in seed are averaged (error bars: std).
        out_dir: folder for the PNGs (created).

    Returns:
        Paths of the PNG files written, in a stable order (by sweep, then target, protocol,
        metric). Empty when no record supports a figure.
    """
    aggs = aggregate(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple, list[Aggregate]] = {}
    for a in aggs:
        figures.setdefault(tuple(a.key[k] for k in _FIGURE_KEYS), []).append(a)
    written: list[Path] = []
    for sweep, (x_key, x_label, caption) in SWEEPS.items():
        for (target, protocol, metric), members in figures.items():
            members = [a for a in members if a.n > 0]
            name = f"{sweep}_{_safe(target)}_{_safe(protocol)}_{_safe(metric)}.png"
            title = f"{caption}\n{target}, {protocol} {metric}"
            if x_key == "layer":
                path = _layer_figure(members, out / name, title, metric)
            else:
                path = _sweep_figure(members, x_key, x_label, out / name, title, metric)
            if path is not None:
                written.append(path)
    return written
