"""Report figures and page from stored records covering a layer, a K and a noise sweep."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from clusterfit.errors import DataError
from clusterfit.report import make_plots, write_report

LAYERS = ("conv1", "res2", "res3", "res4", "res5")


def _r(model, layer, value, seed, *, target="cifar10", protocol="linear", k=None, noise=None,
       objective="supervised"):  # fmt: skip
    return {"model": model, "layer": layer, "target": target, "protocol": protocol,
            "metric": "top1", "value": value, "k": k, "label_noise": noise,
            "objective": objective, "seed": seed, "shots": None, "extra": {}}  # fmt: skip


def stored_records() -> list[dict]:
    """Two seeds of: a layer sweep (N_pre, N_cf), a K sweep (rotnet), a label-noise sweep."""
    out = []
    for seed in (0, 1):
        d = float(seed)  # seed 0 and 1 differ by 1 point: std = 0.71
        for i, layer in enumerate(LAYERS):
            out.append(_r("N_pre", layer, 40.0 + 5 * i + d, seed))
            out.append(_r("N_cf", layer, 42.0 + 5 * i + d, seed, k=100))
        out.append(_r("N_pre", "res5", 30.0 + d, seed, objective="rotnet"))
        for j, k in enumerate((16, 64, 256)):
            out.append(_r("N_cf", "res5", 33.0 + j + d, seed, k=k, objective="rotnet"))
        for p, drop in ((0.0, 0), (0.5, 10), (0.75, 20)):
            kw = dict(target="fmnist", protocol="knn", noise=p)
            out.append(_r("N_pre", "res5", 80.0 - 2 * drop + d, seed, **kw))
            out.append(_r("N_cf", "res5", 81.0 - drop + d, seed, k=100, **kw))
    return out


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 300 and img.height >= 200


def test_each_sweep_gives_its_figure(tmp_path):
    paths = make_plots(stored_records(), tmp_path)
    assert [p.name for p in paths] == [
        "layers_cifar10_linear_top1.png",
        "k_cifar10_linear_top1.png",
        "noise_fmnist_knn_top1.png",
    ]
    for p in paths:
        _check_png(p)


def test_no_sweep_no_figure(tmp_path):
    single = [r for r in stored_records() if r["layer"] == "res5" and r["k"] in (None, 100)]
    single = [r for r in single if r["label_noise"] is None]
    assert make_plots(single, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_write_report_builds_pages_table_and_images(tmp_path):
    out = write_report({"run": "demo", "records": stored_records()}, tmp_path / "report")
    folder = tmp_path / "report"
    assert out["n_records"] == 2 * (10 + 4 + 6) and out["runs"] == ["demo"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.md", "index.html"] + [p.split("/")[-1] for p in out["plots"]]
    )
    md = (folder / "index.md").read_text()
    html = (folder / "index.html").read_text()
    # Layer sweep: N_cf res5 = (62 + 63) / 2 with std 0.71; K sweep: K=256 -> 35.5;
    # noise sweep: N_pre at p = 0.75 -> 40.5, N_cf -> 61.5.
    for cell in ("62.50 ± 0.71", "35.50 ± 0.71", "40.50 ± 0.71", "61.50 ± 0.71"):
        assert cell in md and cell in html
    row = next(line for line in md.splitlines() if line.startswith("| N_cf | rotnet | 256 |"))
    assert "35.50 ± 0.71" in row
    for p in out["plots"]:
        name = p.split("/")[-1]
        _check_png(folder / name)
        assert f"]({name})" in md
        assert f'<img src="{name}"' in html
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "http" not in html
    assert len(re.findall(r"<tr>", html)) == out["n_rows"] + 1


@pytest.mark.parametrize("bad", ["target", "value"])
def test_write_report_rejects_incomplete_records(tmp_path, bad):
    records = stored_records()
    del records[3][bad]
    with pytest.raises(DataError, match="lacks"):
        write_report(records, tmp_path)
