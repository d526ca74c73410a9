"""Report tables: aggregation over seeds/runs, layout, loading results files."""

from __future__ import annotations

import json
import math

import pytest

from clusterfit.errors import DataError
from clusterfit.report.tables import aggregate, html_table, load_records, markdown_table


def rec(model, layer, value, *, seed=0, target="cifar10", k=None, noise=None, **kw):
    return {
        "model": model,
        "layer": layer,
        "target": target,
        "protocol": kw.pop("protocol", "linear"),
        "metric": kw.pop("metric", "top1"),
        "value": value,
        "k": k,
        "label_noise": noise,
        "objective": kw.pop("objective", "supervised"),
        "seed": seed,
        "shots": kw.pop("shots", None),
        "extra": {},
    }


def test_mean_and_std_over_seeds():
    records = [
        rec("N_cf", "res5", 70.0, seed=0, k=100),
        rec("N_cf", "res5", 72.0, seed=1, k=100),
        rec("N_pre", "res5", 65.5),
        rec("N_pre", "conv1", 40.0, target="voc07", metric="mAP", protocol="svm"),
    ]
    aggs = aggregate(records)
    assert [(a.key["model"], a.key["layer"]) for a in aggs][:2] == [
        ("N_pre", "conv1"),
        ("N_pre", "res5"),
    ]
    cf = next(a for a in aggs if a.key["model"] == "N_cf")
    assert cf.n == 2 and cf.mean == 71.0 and cf.std == pytest.approx(math.sqrt(2))
    table = markdown_table(records)
    assert "71.00 ± 1.41" in table
    assert "| 65.50 |" in table
    lines = table.splitlines()
    assert lines[0] == "| model | objective | K | layer | protocol | metric | cifar10 | voc07 |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    # N_pre rows come first, conv1 before res5; an N_cf row shows its K.
    assert lines[2].startswith("| N_pre | supervised | – | conv1 | svm | mAP |  | 40.00 |")
    assert lines[4] == "| N_cf | supervised | 100 | res5 | linear | top1 | 71.00 ± 1.41 |  |"
    assert len(lines) == 5


def test_html_table_escapes():
    out = html_table([rec("N_pre", "res5", 50.0, target="a<b")])
    assert "<th>a&lt;b</th>" in out and "<td>50.00</td>" in out


def test_load_records_of_several_runs(tmp_path):
    for seed in (0, 1):
        run = tmp_path / f"run{seed}" / "probe"
        run.mkdir(parents=True)
        doc = {"run": f"demo-s{seed}", "records": [rec("N_cf", "res5", 60.0 + 2 * seed, seed=seed)]}
        (run / "results.json").write_text(json.dumps(doc))
    records = load_records([tmp_path / "run0", tmp_path / "run1" / "probe" / "results.json"])
    assert [r["run"] for r in records] == ["demo-s0", "demo-s1"]
    (agg,) = aggregate(records)
    assert agg.n == 2 and agg.mean == 61.0
    assert "61.00 ± 1.41" in markdown_table({"records": records})
    with pytest.raises(DataError, match=r"no probe/results\.json"):
        load_records([tmp_path])


def test_bad_records_raise_and_empty_is_noted():
    with pytest.raises(DataError, match="lacks \\['value'\\]"):
        markdown_table([{"model": "N_pre", "layer": "res5", "target": "t", "protocol": "linear",
                         "metric": "top1"}])  # fmt: skip
    with pytest.raises(DataError, match="non-numeric"):
        aggregate([rec("N_pre", "res5", "high")])
    assert markdown_table([]) == "_No results._\n"
