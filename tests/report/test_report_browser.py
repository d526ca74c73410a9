"""The run report in a real browser: a tiny real run, its page loaded by headless Chromium.

The DOM after load (``--dump-dom``) must show the layer table, the NMI / purity figures of the
run's ``clusters/stats.json``, the size chart and training curves (loaded), and thumbnails of
members for every cluster; a screenshot must not be blank. A report over several runs keeps
runs of different settings apart and averages seeds of one setting. Skipped, saying why, only
where no Chromium can be found (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from clusterfit.cli import main

BROWSER = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium on PATH (install Debian's chromium: apt-get install chromium, as "
    ".ci/run does)",
)
TINY = [
    "--smoke",
    "data.limit=96",
    "cluster.k=6",
    "probe.targets.0.limit=96",
    "probe.targets.0.test_limit=96",
    "probe.n_updates=10",
    "probe.layers=[res3,res4,res5]",
    "pretrain.train.batch_size=32",
    "progress=false",
]


def chromium(*args: str, timeout: float = 60) -> str:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", *TINY, f"out_dir={out}", "name=tiny"]) == 0
    return out / "tiny-smoke"


class Dom(HTMLParser):
    """Elements of a dumped DOM: (tag, attrs, ancestors' classes), and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[dict[str, str]]]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a, [x[1] for x in self.stack]))
        if tag not in ("img", "meta", "br", "input", "link"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str = "") -> list[tuple[dict, list[dict]]]:
        return [
            (a, up)
            for t, a, up in self.elements
            if t == tag and (not cls or cls in a.get("class", "").split())
        ]


@needs_browser
def test_page_in_the_browser_shows_clusters_table_figures(run_dir: Path) -> None:
    report = run_dir / "report"
    page = report / "index.html"
    dom_text = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    dom = Dom(dom_text)
    text = " ".join(dom.text)
    # the figures (size chart, training curves, layer plot) loaded in the browser
    body = dom.find("body")[0][0]
    loaded, total = map(int, body["data-figures-loaded"].split("/"))
    assert total >= 3 and loaded == total
    assert dom.find("img", "size-chart") and dom.find("img", "training-curves")
    # every cluster is shown (K = 6 <= 100) with nearest and random member thumbnails on disk
    stats = json.loads((run_dir / "clusters" / "stats.json").read_text())
    assignments = np.load(run_dir / "clusters" / "assignments.npy")
    cards = dom.find("div", "cluster")
    assert sorted(int(a["data-cid"]) for a, _ in cards) == list(range(stats["n_clusters"]))
    for a, _ in cards:
        cid = int(a["data-cid"])
        assert int(a["data-size"]) == int((assignments == cid).sum())
    thumbs = [
        (a, up) for a, up in dom.find("img") if any("cluster" in u.get("class", "") for u in up)
    ]
    by_cluster: dict[int, set[str]] = {}
    for a, up in thumbs:
        cid = int(next(u["data-cid"] for u in up if "data-cid" in u))
        kind = next(u["class"].split()[1] for u in up if u.get("class", "").startswith("thumbs"))
        by_cluster.setdefault(cid, set()).add(kind)
        assert a["loading"] == "lazy" and (report / a["src"]).is_file()
        item = int(a["alt"].split()[1])
        assert assignments[item] == cid  # a thumbnail of a member of that very cluster
    assert all(by_cluster.get(c) == {"nearest", "random"} for c in range(stats["n_clusters"]))
    # NMI / ARI / purity as in stats.json
    for key in ("nmi", "ari", "purity"):
        (span, _), *_ = dom.find("span", key)
        assert f"{stats[key]:.3f}" in "".join(dom_text.split(f'class="{key}"')[1].split("</b>")[:1])
        assert span
    # the layer table: random | N_pre | N_cf | N_cf − N_pre, one row per probed layer
    records = json.loads((run_dir / "probe" / "results.json").read_text())["records"]
    table = dom_text.split('class="layers"')[1].split("</table>")[0]
    headers = re.findall(r"<th>(.*?)</th>", table)
    assert headers == ["layer", "random", "N_pre", "N_cf", "N_cf − N_pre"]
    for layer in ("res3", "res4", "res5"):
        val = {
            r["model"]: r["value"]
            for r in records
            if r["layer"] == layer and r["protocol"] == "linear" and r["metric"] == "top1"
        }
        row = re.search(rf"<tr><td>{layer}</td>(.*?)</tr>", table).group(1)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells == [
            f"{val['random']:.2f}",
            f"{val['N_pre']:.2f}",
            f"{val['N_cf']:.2f}",
            f"{val['N_cf'] - val['N_pre']:+.2f}",
        ]
    assert "one seed: no spread" in text and "random floor" in text
    assert "BatchNorm" in text  # what "random" is, said on the page
    # self-contained: nothing fetched from the network
    assert not re.search(r'(src|href)="(https?:)?//', dom_text)
    # the markdown carries the same layer table
    md = (report / "index.md").read_text()
    assert "| layer | random | N_pre | N_cf | N_cf − N_pre |" in md


@needs_browser
def test_screenshot_is_not_blank(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "page.png"
    chromium(
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        (run_dir / "report" / "index.html").as_uri(),
    )
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1280)
    assert img.std() > 20  # text, tables, charts and thumbnails; a blank page is one grey level
    # the lower half (clusters, thumbnails) is not blank either
    assert img[1200:].std() > 20


def _copy_run(src: Path, dst: Path, *, seed: int, shift: float, settings: str | None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    doc = json.loads((dst / "probe" / "results.json").read_text())
    doc["run"] = dst.name
    for r in doc["records"]:
        r["seed"] = seed
        r["value"] += shift
        if settings is not None:
            r["settings"] = settings
    (dst / "probe" / "results.json").write_text(json.dumps(doc))
    return dst


@needs_browser
def test_report_over_runs_averages_seeds_keeps_settings_apart(
    run_dir: Path, tmp_path: Path
) -> None:
    own = (run_dir / "report" / "index.html").read_bytes()
    seed1 = _copy_run(run_dir, tmp_path / "tiny-seed1", seed=1, shift=2.0, settings=None)
    other = _copy_run(run_dir, tmp_path / "tiny-other", seed=0, shift=-5.0, settings="0ther")
    out = tmp_path / "combined"
    # a report over several runs never goes into a run's own report folder
    assert main(["report", str(run_dir), str(seed1), "--out", str(run_dir / "report")]) == 2
    assert main(["report", str(run_dir), str(seed1), str(other), "--out", str(out)]) == 0
    assert (run_dir / "report" / "index.html").read_bytes() == own
    dom_text = chromium("--dump-dom", (out / "index.html").as_uri())
    groups = dom_text.split('class="groups"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td><td>(.*?)</td></tr>", groups)
    assert rows == [("1", "tiny-smoke, tiny-seed1", "0, 1"), ("2", "tiny-other", "0")]
    records = json.loads((run_dir / "probe" / "results.json").read_text())["records"]
    n_cf = next(
        r["value"]
        for r in records
        if (r["model"], r["layer"], r["metric"], r["protocol"])
        == ("N_cf", "res5", "top1", "linear")
    )
    tables = dom_text.split('class="layers"')[1:]
    res5 = [re.search(r"<tr><td>res5</td>(.*?)</tr>", t).group(1) for t in tables]
    first = re.findall(r"<td[^>]*>(.*?)</td>", res5[0])
    second = re.findall(r"<td[^>]*>(.*?)</td>", res5[1])
    # group 1: seeds 0 and 1 averaged (values v and v + 2: mean v + 1, std sqrt(2))
    assert first[2] == f"{n_cf + 1:.2f} ± {np.sqrt(2):.2f}"
    assert second[2] == f"{n_cf - 5:.2f}"  # the other setting alone
    assert "one seed: no spread" not in dom_text.split('class="verdict"')[1].split("</div>")[0]


@needs_browser
def test_large_k_shows_a_selection_on_pages_of_blocks(run_dir: Path, tmp_path: Path) -> None:
    from clusterfit.artifacts import write_json
    from clusterfit.cluster import cluster_stats
    from clusterfit.report import write_run_report
    from clusterfit.report.clusters import SHOW_ALL, SHOW_LARGEST, SHOW_MIXED, SHOW_SMALLEST
    from clusterfit.report.page import BLOCK

    run = tmp_path / "big-k"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report"))
    feats = np.load(run / "features" / "pool.npy")
    k = 150  # above the one-page limit: more clusters than the 96 items, many of them empty
    a = np.random.default_rng(0).integers(0, k, len(feats))
    np.save(run / "clusters" / "assignments.npy", a)
    centroids = np.stack([feats[a == c].mean(0) if (a == c).any() else feats[0] for c in range(k)])
    np.save(run / "clusters" / "centroids.npy", centroids.astype(np.float32))
    write_json(run / "clusters" / "stats.json", cluster_stats(a, k))
    out = write_run_report([run], run / "report")
    n_random = SHOW_ALL - SHOW_LARGEST - SHOW_SMALLEST - SHOW_MIXED
    want_pages = sum(-(-n // BLOCK) for n in (SHOW_LARGEST, SHOW_SMALLEST, SHOW_MIXED, n_random))
    assert len(out["pages"]) == want_pages
    index = (run / "report" / "index.html").read_text()
    assert all(f'href="{p}"' in index for p in out["pages"])
    shown = []
    for i, page in enumerate(out["pages"]):
        path = run / "report" / page  # the first page through the browser, the rest as written
        dom = Dom(chromium("--dump-dom", path.as_uri()) if i == 0 else path.read_text())
        cards = dom.find("div", "cluster")
        assert 0 < len(cards) <= BLOCK
        for card, _ in cards:
            cid, size = int(card["data-cid"]), int(card["data-size"])
            assert size == int((a == cid).sum())
            imgs = [
                x for x, up in dom.find("img") if any(u.get("data-cid") == str(cid) for u in up)
            ]
            assert len(imgs) == (0 if size == 0 else min(size, 8) * 2)
            shown.append(cid)
    assert len(shown) == len(set(shown)) == SHOW_ALL
    sizes = np.bincount(a, minlength=k)
    assert sorted(sizes[shown[:SHOW_LARGEST]]) == sorted(np.sort(sizes)[-SHOW_LARGEST:])


@needs_browser
@pytest.mark.parametrize("order", ["purity:asc", "size:desc"])
def test_cluster_cards_sort_in_the_browser(run_dir: Path, order: str) -> None:
    page = (run_dir / "report" / "index.html").as_uri()
    dom = Dom(chromium("--virtual-time-budget=3000", "--dump-dom", f"{page}#sort={order}"))
    field, direction = order.split(":")
    got = [float(a[f"data-{field}"]) for a, _ in dom.find("div", "cluster")]
    assert len(got) > 2 and len(set(got)) > 1
    assert got == sorted(got, reverse=direction == "desc")


def test_the_recorded_config_reproduces_the_run(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from clusterfit.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    assert (cfg.name, cfg.data.limit, cfg.cluster.k) == ("tiny-smoke", 96, 6)
    assert json.loads((run_dir / "run.json").read_text())["config"]["cluster"]["k"] == 6
    page = (run_dir / "report" / "index.html").read_text()
    command = f"clusterfit run --config {run_dir / 'config.yaml'}"
    assert command in page
    capsys.readouterr()
    assert main(command.split()[1:]) == 0  # the same run: every stage is up to date
    out = capsys.readouterr().out
    for stage in ("pretrain", "features", "clusters", "fit", "probe"):
        assert f"{stage}: up to date, skipped" in out
