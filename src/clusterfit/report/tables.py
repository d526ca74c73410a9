"""Result records -> aggregated rows -> markdown / HTML tables.

The probe stage of ClusterFit (Yan et al., CVPR 2020) writes one record per (model, layer,
target, protocol, metric, seed), in percent; a report may gather records of several runs. Here
records that differ only in ``seed`` (or in ``run``) are aggregated to mean ± standard
deviation (ddof = 1), and laid out like the paper's tables: one row per model and condition
(objective, K, label noise, layer, protocol, shots, metric), one column per target dataset.

Record schema (the probe stage's ``results.json``)::

    {"model": "N_pre" | "N_cf" | ..., "layer": "res5", "target": str,
     "protocol": "linear" | "knn" | "svm" | "lowshot", "metric": "top1" | "top5" | "mAP",
     "value": float (percent), "k": int | None, "label_noise": float | None,
     "objective": str, "seed": int, "shots": int | None, "extra": {...},
     "settings": str (digest of what else made the quantity; records differing here are not
     seeds of one another)}
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterfit.errors import ClusterFitError, DataError

__all__ = [
    "CONDITION_KEYS",
    "Aggregate",
    "aggregate",
    "check_records",
    "html_table",
    "load_records",
    "markdown_table",
    "normalize_records",
    "table_rows",
]

REQUIRED_KEYS = ("model", "layer", "target", "protocol", "metric", "value")
OPTIONAL_KEYS = ("k", "label_noise", "objective", "seed", "shots", "extra", "run", "settings")
# What identifies one measured quantity; records equal on all of these are seeds of it.
CONDITION_KEYS = (
    "model",
    "objective",
    "k",
    "label_noise",
    "layer",
    "target",
    "protocol",
    "shots",
    "metric",
    # a digest of everything else the quantity was made with (architecture, recipe, data and its
    # size, ...): runs that differ there are not seeds of one another
    "settings",
)
LAYER_ORDER = ("conv1", "res2", "res3", "res4", "res5", "pool")
MODEL_ORDER = ("N_pre", "N_cf")
_HEADERS = {
    "model": "model",
    "objective": "objective",
    "k": "K",
    "label_noise": "label noise",
    "layer": "layer",
    "protocol": "protocol",
    "shots": "shots",
    "metric": "metric",
    "settings": "settings",
}


@dataclass
class Aggregate:
    """One measured quantity over its seeds: ``mean`` and ``std`` (ddof=1; 0 for one seed)."""

    key: dict[str, Any]
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


def normalize_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check records and fill absent optional keys with None.

    Raises:
        DataError: a record is not a dict, lacks a required key, or has a non-numeric value.
    """
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"record {i} is a {type(rec).__name__}, not a dict")
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise DataError(
                f"record {i} ({ {k: rec.get(k) for k in ('model', 'layer', 'target')} }) lacks "
                f"{missing}; probe results must follow the record schema"
            )
        try:
            value = float(rec["value"])
        except (TypeError, ValueError):
            raise DataError(f"record {i} has a non-numeric value {rec['value']!r}") from None
        full = {k: rec.get(k) for k in OPTIONAL_KEYS} | dict(rec)
        full["value"] = value
        if full["model"] == "random":  # the untrained floor has no objective, noise or K
            full["objective"] = full["label_noise"] = full["k"] = None
        out.append(full)
    return out


def _with_run(rec: Any, run: Any) -> Any:
    return {"run": run} | rec if isinstance(rec, dict) else rec


def _read_results(p: Path) -> dict[str, Any]:
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"results file {p} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"results file {p} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise DataError(f"results file {p} has no 'records' list")
    return doc


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read the records of one or more probe ``results.json`` files or run folders.

    A run folder is read through every ``probe*/results.json`` in it (``probe``, or
    ``probe-k<K>`` for each K of a sweep; N_pre's records, shared by every K, are counted once),
    else as ``<folder>/results.json``. Each record gets its run's name (unless it has its own).
    """
    records: list[dict[str, Any]] = []
    for p in map(Path, paths):
        files = sorted(p.glob("probe*/results.json")) if p.is_dir() else [p]
        if p.is_dir() and not files and (p / "results.json").is_file():
            files = [p / "results.json"]
        if not files:
            raise DataError(
                f"{p} holds no probe/results.json: finish the run first with `clusterfit run` "
                "(or `clusterfit probe`)"
            )
        seen: set[tuple] = set()
        for f in files:
            doc = _read_results(f)
            run = doc.get(
                "run", f.parent.parent.name if f.parent.name.startswith("probe") else f.stem
            )
            for rec in doc["records"]:
                if isinstance(rec, dict):
                    key = tuple(str(rec.get(k)) for k in (*CONDITION_KEYS, "seed"))
                    if key in seen:
                        continue
                    seen.add(key)
                records.append(_with_run(rec, run))
    return normalize_records(records)


def layer_rank(layer: str) -> tuple[int, str]:
    """Sort key of a layer name: conv1, res2 .. res5, pool, then other names alphabetically."""
    return (LAYER_ORDER.index(layer), "") if layer in LAYER_ORDER else (len(LAYER_ORDER), layer)


def _model_rank(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model), "") if model in MODEL_ORDER else (len(MODEL_ORDER), model)


def _none_first(v: Any) -> tuple[int, Any]:
    return (0, 0) if v is None else (1, v)


def sort_key(key: dict[str, Any]) -> tuple:
    """Order of rows: model (N_pre, N_cf, others), objective, K, noise, layer, protocol, ..."""
    return (
        _model_rank(str(key["model"])),
        str(key.get("objective") or ""),
        _none_first(key.get("k")),
        _none_first(key.get("label_noise")),
        layer_rank(str(key["layer"])),
        str(key.get("target")),
        str(key["protocol"]),
        _none_first(key.get("shots")),
        str(key["metric"]),
        str(key.get("settings") or ""),
    )


def aggregate(records: Iterable[dict[str, Any]] | dict[str, Any]) -> list[Aggregate]:
    """Group records by :data:`CONDITION_KEYS` (over seeds and runs), sorted for display.

    ``records``: a list of records or a ``{"records": [...]}`` document.

    Non-finite values are dropped (a quantity left with none has ``n == 0``, mean NaN).
    """
    groups: dict[tuple, Aggregate] = {}
    for rec in check_records(records):
        key = {k: rec.get(k) for k in CONDITION_KEYS}
        agg = groups.setdefault(tuple(map(_hashable, key.values())), Aggregate(key))
        if math.isfinite(rec["value"]):
            agg.values.append(rec["value"])
            agg.seeds.append(rec.get("seed"))
    return sorted(groups.values(), key=lambda a: sort_key(a.key))


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def format_value(agg: Aggregate, digits: int = 2) -> str:
    """``"71.20"`` for one seed, ``"71.20 ± 0.45"`` for several, ``"–"`` for none."""
    if agg.n == 0:
        return "–"
    if agg.n == 1:
        return f"{agg.mean:.{digits}f}"
    return f"{agg.mean:.{digits}f} ± {agg.std:.{digits}f}"


def _format_key(name: str, v: Any) -> str:
    if v is None:
        return "–"
    if name == "label_noise" and isinstance(v, float):
        return f"{v:g}"
    return str(v)


def table_rows(
    records: Iterable[dict[str, Any]] | dict[str, Any], digits: int = 2
) -> tuple[list[str], list[list[str]]]:
    """The table as (header, rows) of strings: condition columns, then one column per target.

    Condition columns that are empty (None) in every record are left out; targets are in the
    order of their first appearance in ``records``.
    """
    recs = check_records(records)
    aggs = aggregate(recs)
    if not aggs:
        return [], []
    targets = list(dict.fromkeys(str(r["target"]) for r in recs))  # order of first appearance
    cond = [k for k in CONDITION_KEYS if k != "target" and any(a.key[k] is not None for a in aggs)]
    if "settings" in cond:  # shown only where it tells rows apart
        by_rest: dict[tuple, set] = {}
        for a in aggs:
            rest = tuple(_hashable(a.key[k]) for k in CONDITION_KEYS if k != "settings")
            by_rest.setdefault(rest, set()).add(a.key["settings"])
        if all(len(v) == 1 for v in by_rest.values()):
            cond.remove("settings")
    rows: dict[tuple, dict[str, str]] = {}
    for a in aggs:
        row_key = tuple(_hashable(a.key[k]) for k in cond)
        cells = rows.setdefault(row_key, {k: _format_key(k, a.key[k]) for k in cond})
        cells[str(a.key["target"])] = format_value(a, digits)
    header = [_HEADERS[k] for k in cond] + [str(t) for t in targets]
    body = [
        [cells.get(k, "") for k in cond] + [cells.get(t, "") for t in targets]
        for cells in rows.values()
    ]
    return header, body


def markdown_table(records: Iterable[dict[str, Any]], digits: int = 2) -> str:
    """A GitHub-flavoured markdown table of the records (see :func:`table_rows`).

    Values are percent; several seeds show as mean ± standard deviation (ddof=1). Returns a
    one-line note when there is no record.
    """
    header, body = table_rows(records, digits)
    if not header:
        return "_No results._\n"
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines) + "\n"


def html_table(records: Iterable[dict[str, Any]], digits: int = 2) -> str:
    """The same table as an HTML ``<table>`` element (escaped)."""
    header, body = table_rows(records, digits)
    if not header:
        return "<p><em>No results.</em></p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def check_records(records: Any) -> list[dict[str, Any]]:
    """Accept a list of records or a ``{"records": [...]}`` document; return checked records."""
    if isinstance(records, dict):
        if "records" not in records:
            raise ClusterFitError("expected a list of records or a dict with a 'records' list")
        run = records.get("run")
        return normalize_records(_with_run(r, run) for r in records["records"])
    return normalize_records(records)
