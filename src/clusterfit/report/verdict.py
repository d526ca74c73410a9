"""The layer table ``random | N_pre | ... | N_cf | N_cf - N_pre`` and a verdict in words.

ClusterFit's claim (Yan et al., CVPR 2020, §3.2, §4, Fig. 4) is layer-wise: N_cf's frozen
features transfer better than N_pre's, most of all in the deep layers. For each target this module
lays the linear-probe accuracy of every probed network out by layer (mean ± std over the seeds of
one setting), adds the difference N_cf - N_pre, and says in one sentence where N_cf wins, whether
the win is larger than the seed spread, and how far N_cf stands above the random-init floor.

Rule for "beyond the seed spread": the difference of the means exceeds the sum of the two standard
deviations (ddof = 1), i.e. the mean ± std intervals do not overlap. One seed has no spread, and
the sentence says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clusterfit.report.tables import Aggregate, aggregate, layer_rank

__all__ = ["LayerTable", "layer_tables", "verdict"]

#: the probe whose table is the verdict's: linear top-1, or SVM mAP for a multi-label target
MAIN_PROBES = (("linear", "top1"), ("svm", "mAP"))
_MODEL_ORDER = ("random", "N_pre", "N_pre_2", "N_pre_3", "N_pre_2x", "distill", "N_cf")


@dataclass
class Column:
    """One network of the table: ``model`` and, for N_cf of a sweep, its ``k``."""

    model: str
    k: int | None = None
    label: str = ""

    def matches(self, key: dict[str, Any]) -> bool:
        return key["model"] == self.model and (self.k is None or key.get("k") == self.k)


@dataclass
class LayerTable:
    """Accuracy by layer for one (target, protocol, metric): ``cells[layer][column label]``."""

    target: str
    protocol: str
    metric: str
    layers: list[str]
    columns: list[Column]
    cells: dict[str, dict[str, Aggregate]] = field(default_factory=dict)

    @property
    def n_cf(self) -> list[Column]:
        return [c for c in self.columns if c.model == "N_cf"]

    def cell(self, layer: str, label: str) -> Aggregate | None:
        a = self.cells.get(layer, {}).get(label)
        return a if a is not None and a.n > 0 else None

    def delta(self, layer: str, col: Column, base: str = "N_pre") -> float | None:
        a, b = self.cell(layer, col.label), self.cell(layer, base)
        return None if a is None or b is None else a.mean - b.mean

    def header(self) -> list[str]:
        deltas = [f"{c.label} − N_pre" for c in self.n_cf if self._has("N_pre")]
        return ["layer", *[c.label for c in self.columns], *deltas]

    def _has(self, label: str) -> bool:
        return any(self.cell(layer, label) for layer in self.layers)

    def rows(self) -> list[list[str]]:
        """The table as strings: mean (± std over seeds), then signed differences."""
        out = []
        for layer in self.layers:
            row = [layer]
            for c in self.columns:
                a = self.cell(layer, c.label)
                row.append(_fmt(a))
            if self._has("N_pre"):
                for c in self.n_cf:
                    d = self.delta(layer, c)
                    row.append("–" if d is None else f"{d:+.2f}")
            out.append(row)
        return out


def _fmt(a: Aggregate | None) -> str:
    if a is None:
        return "–"
    return f"{a.mean:.2f}" if a.n == 1 else f"{a.mean:.2f} ± {a.std:.2f}"


def _model_rank(m: str) -> tuple[int, str]:
    return (_MODEL_ORDER.index(m), "") if m in _MODEL_ORDER else (len(_MODEL_ORDER) - 1, m)


def layer_tables(records: list[dict[str, Any]] | list[Aggregate]) -> list[LayerTable]:
    """One :class:`LayerTable` per target (and main probe) of ``records`` (the records of one
    setting, seeds averaged). N_cf gets one column per K when there are several."""
    aggs = records if records and isinstance(records[0], Aggregate) else aggregate(records)
    tables: dict[tuple[str, str, str], list[Aggregate]] = {}
    for a in aggs:
        if (a.key["protocol"], a.key["metric"]) in MAIN_PROBES and a.key.get("shots") is None:
            tables.setdefault((a.key["target"], a.key["protocol"], a.key["metric"]), []).append(a)
    out = []
    for (target, protocol, metric), members in tables.items():
        models = sorted({a.key["model"] for a in members}, key=_model_rank)
        ks = sorted({a.key["k"] for a in members if a.key["model"] == "N_cf"} - {None})
        columns = []
        for m in models:
            if m == "N_cf" and len(ks) > 1:
                columns += [Column("N_cf", k, f"N_cf K={k}") for k in ks]
            else:
                columns.append(Column(m, None, m))
        layers = sorted({a.key["layer"] for a in members}, key=layer_rank)
        t = LayerTable(target, protocol, metric, layers, columns)
        for a in members:
            for c in columns:
                if c.matches(a.key):
                    t.cells.setdefault(a.key["layer"], {})[c.label] = a
        out.append(t)
    return out


def _points(values: list[tuple[str, float]]) -> str:
    return ", ".join(f"{layer} {d:+.1f}" for layer, d in values)


def verdict(t: LayerTable) -> list[str]:
    """One plain sentence per N_cf column of ``t``: where N_cf beats N_pre (by how many points),
    whether beyond the seed spread, and how far above the random floor."""
    what = "mAP" if t.metric == "mAP" else f"{t.protocol} {t.metric}"
    sentences = []
    for c in t.n_cf:
        head = f"{t.target}, {what}"
        if not any(t.cell(layer, "N_pre") for layer in t.layers):
            sentences.append(f"{head}: no N_pre to compare {c.label} with.")
            continue
        wins, losses = [], []
        beyond: list[str] = []
        one_seed = False
        for layer in t.layers:
            d = t.delta(layer, c)
            if d is None:
                continue
            a, b = t.cell(layer, c.label), t.cell(layer, "N_pre")
            assert a is not None and b is not None
            if a.n < 2 or b.n < 2:
                one_seed = True
            elif abs(d) > a.std + b.std:
                beyond.append(layer)
            (wins if d > 0 else losses).append((layer, d))
        if wins and not losses:
            s = f"{c.label} beats N_pre at every layer ({_points(wins)})"
        elif wins:
            s = f"{c.label} beats N_pre at {', '.join(w for w, _ in wins)} ({_points(wins)})"
            s += f" and not at {', '.join(w for w, _ in losses)} ({_points(losses)})"
        else:
            s = f"{c.label} beats N_pre at no layer ({_points(losses)})"
        if one_seed:
            s += "; one seed: no spread, so a difference of a point or two may be noise"
        else:
            won_beyond = [w for w in beyond if (t.delta(w, c) or 0) > 0]
            s += (
                f"; beyond the seed spread at {', '.join(won_beyond)}"
                if won_beyond
                else "; no win is beyond the seed spread (mean ± std intervals overlap)"
            )
        floor = [
            (layer, (t.cell(layer, c.label).mean - t.cell(layer, "random").mean))  # type: ignore[union-attr]
            for layer in t.layers
            if t.cell(layer, c.label) and t.cell(layer, "random")
        ]
        if floor:
            best_layer, best = max(floor, key=lambda x: x[1])
            pre = [
                (layer, t.cell(layer, "N_pre").mean - t.cell(layer, "random").mean)  # type: ignore[union-attr]
                for layer in t.layers
                if t.cell(layer, "N_pre") and t.cell(layer, "random")
            ]
            s += (
                f". Above the random floor: {c.label} by {best:+.1f} points at its best layer "
                f"({best_layer})"
            )
            if pre:
                pl, pb = max(pre, key=lambda x: x[1])
                s += f", N_pre by {pb:+.1f} at {pl}"
            if best <= 0:
                s += " — no layer of N_cf beats an untrained network"
        else:
            s += ". No random floor was probed (probe.random_baseline=false)"
        sentences.append(f"{head}: {s}.")
    return sentences
