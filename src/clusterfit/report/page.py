"""The report of one or more runs: ``index.html`` (self-contained) and ``index.md``.

What a reader needs to judge a ClusterFit run (Yan et al., CVPR 2020) on one page:

1. **Summary**: the settings in words, the layer table ``random | N_pre | N_cf | N_cf - N_pre``
   per target (paper Fig. 4 as numbers) and a verdict sentence per target
   (:mod:`clusterfit.report.verdict`).
2. **Clusters** (§3.1): sizes, NMI / ARI / purity against the labels, and per cluster the members
   nearest the centroid and random members as thumbnails, with the label mix, sortable by size and
   purity (:mod:`clusterfit.report.clusters`). K > 100: a selection, a page per block.
3. **Training**: loss, train accuracy and learning rate per epoch of every trained network.
4. **Sweeps**: the paper's plots (layer-wise, against K, against label noise) over the records.
5. **Provenance**: command lines, config, versions, timings and fingerprints per stage.

Several runs are grouped by their full settings: runs whose records agree on everything but the
seed are seeds of one setting and are averaged; others stay apart. The page uses no network
resource: CSS and JavaScript are inline, images are files beside it (thumbnails lazy-loaded).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clusterfit.report.clusters import Clustering, load_clustering, load_run_data
from clusterfit.report.figures import size_chart, training_curves
from clusterfit.report.plots import SWEEPS, make_plots
from clusterfit.report.runinfo import RunInfo, load_run
from clusterfit.report.tables import check_records, load_records, markdown_table, table_rows
from clusterfit.report.verdict import LayerTable, layer_tables, verdict

__all__ = ["RANDOM_FLOOR_TEXT", "group_runs", "settings_in_words", "write_run_report"]

#: clusters per page when K is above the one-page limit
BLOCK = 25
THUMBS = "thumbs"

RANDOM_FLOOR_TEXT = (
    "“random” is the floor: a network of N_pre's architecture (N_cf's too, unless fit.arch "
    "names another) with freshly initialised weights, never trained. Only its BatchNorm "
    "running statistics are re-estimated on up to {n} train images of each target (the weights "
    "stay as initialised): without that, a deep BatchNorm network in eval mode scales its "
    "activations away and its deep layers probe at chance. Its numbers are what the "
    "architecture and a linear probe reach with no learning at all; it has no objective, no "
    "label noise and no K."
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222;
  padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: .9em; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .2em .55em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.win { background: #e3f4e3; } td.loss { background: #f8e3e3; }
.verdict { background: #f6f8fa; border-left: 4px solid #4a7; padding: .5em 1em; }
.note { color: #555; font-size: .92em; }
.figs img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
.stats span { display: inline-block; margin-right: 1.4em; font-size: 1.1em; }
.stats b { font-size: 1.3em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.cluster { border: 1px solid #ccc; border-radius: 6px; padding: .4em .6em; width: 340px; }
.cluster h4 { margin: .1em 0 .3em; font-size: .95em; }
.mix { display: flex; height: 10px; margin: .2em 0 .4em; border: 1px solid #bbb; }
.mix span { display: block; height: 100%; }
.thumbs { display: flex; flex-wrap: wrap; gap: 2px; align-items: center; margin: .15em 0; }
.thumbs em { font-size: .75em; color: #666; width: 100%; }
.thumbs img { height: 34px; image-rendering: pixelated; border: 1px solid #ddd; }
.labels { font-size: .8em; color: #444; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
details { margin: .5em 0; }
""".strip()

_JS = """
function sortCards(sel) {
  var box = document.getElementById(sel.dataset.target);
  var key = sel.value.split(':'), field = key[0], dir = key[1] === 'desc' ? -1 : 1;
  var cards = Array.prototype.slice.call(box.children);
  cards.sort(function (a, b) {
    var x = parseFloat(a.dataset[field]), y = parseFloat(b.dataset[field]);
    if (isNaN(x)) x = -1; if (isNaN(y)) y = -1;
    return dir * (x - y) || (parseInt(a.dataset.cid) - parseInt(b.dataset.cid));
  });
  cards.forEach(function (c) { box.appendChild(c); });
}
function sortFromHash() {
  var m = /sort=([a-z]+:(asc|desc))/.exec(location.hash);
  if (!m) return;
  document.querySelectorAll('select.sort').forEach(function (s) {
    s.value = m[1]; sortCards(s);
  });
}
window.addEventListener('hashchange', sortFromHash);
window.addEventListener('load', function () {
  sortFromHash();
  var figs = document.querySelectorAll('img.fig'), ok = 0;
  figs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
  document.body.dataset.figuresLoaded = ok + '/' + figs.length;
});
""".strip()

_PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]


def _e(x: Any) -> str:
    return html.escape(str(x))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>\n{_CSS}\n</style>\n<script>\n{_JS}\n</script>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [
        "| " + " | ".join(map(esc, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- settings in words
def _source_words(data: dict[str, Any]) -> str:
    src = str(data.get("source"))
    if src.lower() in ("bundled", "fashion-mnist-small"):
        what = "the bundled Fashion-MNIST subset (28×28 greyscale, 10 classes)"
    else:
        what = f"<code>{_e(src)}</code>"
    if data.get("split"):
        what += f", split “{_e(data['split'])}”"
    if data.get("limit"):
        what += f", at most {int(data['limit']):,} items (class-balanced)"
    if data.get("image_size"):
        what += f", images at {data['image_size']} px"
    if data.get("crop_size"):
        what += f", crops of {data['crop_size']} px"
    return what


def _recipe(train: dict[str, Any]) -> str:
    n = train.get("epochs")
    return (
        f"{n} epoch{'' if n == 1 else 's'}, batch {train.get('batch_size')}, lr {train.get('lr')} "
        f"({train.get('schedule')})"
    )


def _arch(arch: Any, kwargs: Any) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in (kwargs or {}).items())
    return f"{arch}({kw})" if kw else str(arch)


def settings_in_words(info: RunInfo, *, seed: bool = True) -> list[str]:
    """The run's settings as short HTML sentences: data, N_pre, features, clustering, N_cf,
    baselines, probes, and (``seed``) the seed."""
    out = []
    cfg = info.config or {}
    feats = info.meta("features").get("summary", {})
    n = feats.get("n_items")
    if cfg.get("data"):
        out.append(
            f"<b>Data</b> D_cf: {_source_words(cfg['data'])}"
            + (f"; {int(n):,} items clustered and trained on." if n else ".")
        )
    elif n:
        out.append(f"<b>Data</b> D_cf: {int(n):,} items (source not recorded).")
    for folder in info.folders("pretrain"):
        p = info.meta(folder).get("config", {}).get("pretrain", {})
        obj = p.get("objective")
        what = {
            "supervised": f"supervised on labels with noise p = {p.get('label_noise')} "
            "(that share of labels replaced by a wrong one)",
            "weak": "supervised on weak labels",
            "rotnet": "RotNet (predict the rotation, §4.2)",
            "jigsaw": f"Jigsaw ({p.get('jigsaw_permutations')} permutations, §4.2)",
            "pretrained": f"taken pre-trained ({p.get('weights') or 'default weights'}), "
            "not trained here",
            "checkpoint": "loaded from a checkpoint, not trained here",
            "module": "a network passed from Python, not trained here",
        }.get(str(obj), str(obj))
        trained = obj in ("supervised", "weak", "rotnet", "jigsaw")
        recipe = f", {_recipe(p.get('train', {}))}" if trained else ""
        out.append(
            f"<b>{_e(folder.replace('pretrain', 'N_pre'))}</b>: "
            f"{_e(_arch(p.get('arch'), p.get('arch_kwargs')))}, {_e(what)}{_e(recipe)}."
        )
    if feats:
        out.append(
            f"<b>Features</b>: N_pre's <code>{_e(feats.get('layer'))}</code> "
            f"({feats.get('dim')}-d), L2-normalised."
        )
    for folder in info.folders("cluster"):
        c = info.meta(folder).get("config", {}).get("cluster", {})
        s = info.meta(folder).get("summary", {})
        out.append(
            f"<b>Clusters</b> ({_e(folder)}): {_e(c.get('method'))}, K = {s.get('k', c.get('k'))}"
            f", {c.get('n_iter')} iterations"
            + (", spherical" if c.get("spherical") else "")
            + (f", PCA to {c.get('pca_dim')}" if c.get("pca_dim") else "")
            + "."
        )
    for folder in info.folders("fit"):
        f = info.meta(folder).get("config", {})
        out.append(
            f"<b>N_cf</b> ({_e(folder)}): {_e(_arch(f.get('arch'), f.get('arch_kwargs')))} "
            f"from scratch on the cluster ids, {_e(_recipe(f.get('train', {})))}."
        )
    for folder in info.folders("baselines"):
        out.append(f"<b>Baseline</b>: {_e(folder)}.")
    probe = info.meta("probe") or next((info.meta(f) for f in info.folders("probe")), {})
    pc = probe.get("config", {})
    if pc:
        targets = ", ".join(
            f"{t.get('name')}"
            + (f" ({t.get('limit')} train / {t.get('test_limit')} test)" if t.get("limit") else "")
            for t in pc.get("targets", [])
        )
        pp = pc.get("probe", {})
        out.append(
            f"<b>Probes</b>: linear classifiers on the frozen layers "
            f"{_e(', '.join(pp.get('layers', [])))} (each pooled to at most "
            f"{pp.get('max_dims')} dims, {pp.get('n_updates')} SGD steps) on {_e(targets)}"
            + ("; kNN on pool" if pp.get("knn") else "")
            + "."
        )
    if seed and info.seed is not None:
        out.append(f"<b>Seed</b>: {info.seed}.")
    return out


def _strip_tags(s: str) -> str:
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", s))


# ----------------------------------------------------------------------------- grouping
def _normal(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def group_runs(infos: Sequence[RunInfo], records: list[dict[str, Any]]) -> list[list[RunInfo]]:
    """Runs grouped by their full settings: two runs are in one group when their probe records
    name the same quantities (model, objective, K, label noise, layer, target, protocol, metric
    and the digest of everything that made them: :data:`clusterfit.report.tables.CONDITION_KEYS`)
    — they differ at most in the seed."""
    from clusterfit.report.tables import CONDITION_KEYS

    keys: dict[str, set] = {i.name: set() for i in infos}
    for r in records:
        if r.get("run") in keys:
            keys[r["run"]].add(tuple(_normal(r.get(k)) for k in CONDITION_KEYS))
    groups: dict[frozenset, list[RunInfo]] = {}
    for i in infos:
        groups.setdefault(frozenset(keys[i.name]), []).append(i)
    return list(groups.values())


# ----------------------------------------------------------------------------- sections
def _layer_table_html(t: LayerTable) -> str:
    header = t.header()
    rows = t.rows()
    n_plain = 1 + len(t.columns)
    body = []
    for r in rows:
        cells = []
        for j, c in enumerate(r):
            cls = ""
            if j >= n_plain and c.startswith("+") and c.strip("+0.") != "":
                cls = ' class="win"'
            elif j >= n_plain and c.startswith("-") and c.strip("-0.") != "":
                cls = ' class="loss"'
            cells.append(f"<td{cls}>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    what = "SVM mAP" if t.metric == "mAP" else f"{t.protocol} probe {t.metric}"
    return (
        f"<h3>{_e(t.target)} — {_e(what)} (%)</h3>\n"
        f'<table class="layers" data-target="{_e(t.target)}">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"
    )


def _verdict_html(tables: list[LayerTable]) -> tuple[str, list[str]]:
    sentences = [s for t in tables for s in verdict(t)]
    return (
        '<div class="verdict">' + "".join(f"<p>{_e(s)}</p>" for s in sentences) + "</div>",
        sentences,
    )


def _cluster_card(view: Any, classes: list[str]) -> str:
    pur = "" if view.purity is None else f"{view.purity:.4f}"
    head = f"cluster {view.cid} · {view.size} items"
    if view.purity is not None:
        head += f" · purity {view.purity:.0%}"
    bar = "".join(
        f'<span style="width:{100 * share:.1f}%;background:'
        f'{_PALETTE[classes.index(name) % len(_PALETTE)] if name in classes else "#999"}" '
        f'title="{_e(name)} {share:.0%}"></span>'
        for name, share in view.mix
    )
    labels = ", ".join(f"{_e(name)} {share:.0%}" for name, share in view.mix[:3])

    def strip(kind: str, items: list[int]) -> str:
        imgs = "".join(
            f'<img loading="lazy" height="34" src="{_e(view.thumbs[i])}" alt="item {i}" '
            f'title="item {i}">'
            for i in items
            if i in view.thumbs
        )
        return f'<div class="thumbs {kind}"><em>{kind}</em>{imgs}</div>' if imgs else ""

    return (
        f'<div class="cluster" id="cluster-{view.cid}" data-cid="{view.cid}" '
        f'data-size="{view.size}" data-purity="{pur}" data-group="{_e(view.group)}">'
        f"<h4>{_e(head)}</h4>"
        + (f'<div class="mix">{bar}</div><div class="labels">{labels}</div>' if view.mix else "")
        + strip("nearest", view.nearest)
        + strip("random", view.random)
        + "</div>"
    )


def _sorter(target: str, has_purity: bool) -> str:
    opts = [("cid:asc", "cluster id"), ("size:desc", "size, largest first")]
    opts += [("size:asc", "size, smallest first")]
    if has_purity:
        opts += [
            ("purity:desc", "purity: nearly one label first"),
            ("purity:asc", "purity: most mixed first"),
        ]
    o = "".join(f'<option value="{v}">{_e(t)}</option>' for v, t in opts)
    links = (
        ' — or follow: <a href="#sort=purity:desc">nearly one label first</a>, '
        '<a href="#sort=purity:asc">most mixed first</a>'
        if has_purity
        else ""
    )
    return (
        f'<p>Sort: <select class="sort" data-target="{target}" '
        f'onchange="sortCards(this)">{o}</select>{links}</p>'
    )


def _stats_html(c: Clustering) -> str:
    s = c.stats
    parts = [f"<span>K <b>{c.k}</b></span>", f"<span>items <b>{int(c.sizes.sum()):,}</b></span>"]
    for key, name in (("nmi", "NMI"), ("ari", "ARI"), ("purity", "purity")):
        if s.get(key) is not None:
            parts.append(f'<span class="{key}">{name} <b>{float(s[key]):.3f}</b></span>')
    parts.append(f"<span>empty <b>{int(s.get('n_empty', (c.sizes == 0).sum()))}</b></span>")
    if s.get("imbalance") is not None:
        parts.append(f"<span>imbalance <b>{float(s['imbalance']):.2f}</b></span>")
    return '<p class="stats">' + "".join(parts) + "</p>"


def _stats_md(c: Clustering) -> str:
    s = c.stats
    header = ["K", "items", "NMI", "ARI", "purity", "empty", "imbalance"]
    fmt = lambda k: "–" if s.get(k) is None else f"{float(s[k]):.3f}"  # noqa: E731
    row = [str(c.k), f"{int(c.sizes.sum()):,}", fmt("nmi"), fmt("ari"), fmt("purity")]
    row += [str(int(s.get("n_empty", 0))), fmt("imbalance")]
    return _md_table(header, [row])


_METRICS_TEXT = (
    "NMI (normalised mutual information, 0 = independent of the labels, 1 = the labels), ARI "
    "(adjusted Rand index, 0 = chance) and purity (share of items whose cluster's majority label "
    "is theirs) compare the clusters with the data set's labels, which the clustering never saw."
)


def _clusters_section(
    info: RunInfo, out: Path, progress: bool, md: list[str]
) -> tuple[str, dict[str, Any]]:
    """HTML of every clustering of a run (and its extra pages); appends markdown to ``md``."""
    data, note = load_run_data(info)
    parts, facts = [], {"clusterings": [], "thumbnails": 0, "pages": []}
    for folder in info.folders("cluster"):
        if not (info.path / folder / "assignments.npy").is_file():
            continue
        c = load_clustering(info, folder, data, note)
        rel = f"{THUMBS}/{folder}"
        from clusterfit.report.clusters import write_thumbnails

        facts["thumbnails"] += write_thumbnails(c, data, out, rel, progress=progress)
        chart = size_chart(c.sizes, out / f"sizes_{folder}.png", f"{folder}: K = {c.k}")
        facts["clusterings"].append(folder)
        parts.append(f'<h3 id="{_e(folder)}">{_e(folder)}</h3>')
        parts.append(_stats_html(c))
        if c.stats.get("nmi") is not None:
            parts.append(f'<p class="note">{_e(_METRICS_TEXT)}</p>')
        parts.append(
            f'<div class="figs"><img class="fig size-chart" src="{_e(chart.name)}" '
            f'alt="cluster sizes of {_e(folder)}"></div>'
        )
        md += [f"### {folder}", "", _stats_md(c), f"![cluster sizes]({chart.name})", ""]
        if c.note:
            parts.append(f'<p class="note">No thumbnails: {_e(c.note)}.</p>')
        has_purity = c.label_counts is not None
        explain = (
            "Each cluster: its size, its label mix (coloured bar, largest label first), the "
            f"{c.m} members nearest its centroid (“nearest”, nearest first; fewer in a smaller "
            "cluster) and as many drawn at random (“random”). A cluster whose "
            "nearest and random members look alike is coherent; hover a thumbnail for its item "
            "index."
        )
        cards_id = f"cards-{folder}"
        md_rows = [
            [
                str(v.cid),
                str(v.size),
                "–" if v.purity is None else f"{v.purity:.0%}",
                ", ".join(f"{n} {s:.0%}" for n, s in v.mix[:3]) or "–",
                " ".join(f"![{i}]({v.thumbs[i]})" for i in v.nearest[:4] if i in v.thumbs),
            ]
            for v in c.views
        ]
        md_header = ["cluster", "size", "purity", "label mix", "nearest members"]
        if c.k <= len(c.views):  # every cluster on this page
            parts.append(f'<p class="note">{_e(explain)}</p>')
            parts.append(_sorter(cards_id, has_purity))
            cards = "\n".join(_cluster_card(v, c.classes) for v in c.views)
            parts.append(f'<div class="cards" id="{cards_id}">\n{cards}\n</div>')
            md += ["Clusters:", "", _md_table(md_header, md_rows)]
            continue
        # K above the one-page limit: a selection, BLOCK clusters per page
        groups: dict[str, list[Any]] = {}
        for v in c.views:
            groups.setdefault(v.group, []).append(v)
        links = []
        page_no = 0
        for group, views in groups.items():
            for lo in range(0, len(views), BLOCK):
                page_no += 1
                block = views[lo : lo + BLOCK]
                name = f"clusters_{folder}_{page_no}.html"
                pid = f"cards-{folder}-{page_no}"
                cards = "\n".join(_cluster_card(v, c.classes) for v in block)
                body = (
                    f'<p><a href="index.html">← report</a></p>\n<h1>{_e(info.name)}: '
                    f"{_e(folder)}, {_e(group)} clusters {lo + 1}–{lo + len(block)} of "
                    f'{len(views)}</h1>\n<p class="note">{_e(explain)}</p>\n'
                    f"{_sorter(pid, has_purity)}\n"
                    f'<div class="cards" id="{pid}">\n{cards}\n</div>'
                )
                (out / name).write_text(_page(f"{info.name} {folder} {group}", body))
                facts["pages"].append(name)
                links.append(
                    f'<li><a href="{name}">{_e(group)}: clusters {lo + 1}–{lo + len(block)} '
                    f"of {len(views)}</a></li>"
                )
        parts.append(
            f"<p>K = {c.k} is more than fits one page: shown are "
            + ", ".join(f"{len(v)} {_e(g)}" for g, v in groups.items())
            + f" (clusters), {BLOCK} per page:</p>"
            f"<ul>{''.join(links)}</ul>"
        )
        md += ["Clusters shown (a selection):", "", _md_table(md_header, md_rows)]
    return "\n".join(parts), facts


def _training_section(infos: Sequence[RunInfo], out: Path, md: list[str]) -> str:
    logs: dict[str, list[dict[str, Any]]] = {}
    many = len(infos) > 1
    for info in infos:
        for folder, rows in info.logs.items():
            name = folder.replace("pretrain", "N_pre").replace("fit", "N_cf")
            logs[f"{info.name}: {name}" if many else name] = rows
    path = training_curves(logs, out / "training.png")
    if path is None:
        return '<p class="note">No training log (no network was trained here).</p>'
    header = ["network", "epochs", "final loss", "final train acc (%)", "final lr"]
    rows = []
    for name, r in logs.items():
        if r:
            last = r[-1]
            fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
            rows.append(
                [
                    name,
                    str(len(r)),
                    fmt(last.get("loss"), ".4f"),
                    fmt(last.get("train_acc"), ".2f"),
                    fmt(last.get("lr"), ".3g"),
                ]
            )
    md += ["## Training", "", _md_table(header, rows), "![training curves](training.png)", ""]
    note = (
        "N_cf's train accuracy is against the cluster ids (K classes), N_pre's against its own "
        "objective's labels (noisy labels, rotations, permutations): the two are not comparable "
        "with each other, only over epochs."
    )
    return (
        _html_table(header, rows, "training")
        + f'<p class="note">{_e(note)}</p>'
        + '<div class="figs"><img class="fig training-curves" src="training.png" '
        'alt="loss, train accuracy and learning rate per epoch"></div>'
    )


def _provenance(info: RunInfo, md: list[str]) -> str:
    rec = info.record or {}
    argv = rec.get("argv") or []
    command = " ".join(
        ["clusterfit" if i == 0 and Path(a).name == "clusterfit" else a for i, a in enumerate(argv)]
    )
    reproduce = (
        f"clusterfit run --config {info.config_path}" if info.config_path is not None else None
    )
    parts = [f"<h3>{_e(info.name)}</h3>", f"<p>Folder: <code>{_e(info.path)}</code></p>"]
    md += [f"### {info.name}", ""]
    if command:
        parts.append(f"<p>Command line: <code>{_e(command)}</code> ({_e(rec.get('started'))})</p>")
        md += [f"Command line: `{command}`", ""]
    if reproduce:
        parts.append(
            f"<p>Reproduce: <code>{_e(reproduce)}</code> (the resolved config, every setting "
            "spelled out; a finished stage is skipped, so this also checks the run is complete)"
            "</p>"
        )
        md += [f"Reproduce: `{reproduce}`", ""]
    else:
        parts.append('<p class="note">No recorded config (run made by an older clusterfit).</p>')
    header = ["stage", "seconds", "finished", "fingerprint", "inputs"]
    rows = [
        [
            f,
            f"{float(m.get('seconds') or 0):.1f}",
            str(m.get("finished", "")),
            str(m.get("fingerprint", ""))[:12],
            ", ".join(f"{k} {str(v)[:8]}" for k, v in (m.get("inputs") or {}).items()),
        ]
        for f, m in info.metas.items()
    ]
    total = sum(info.seconds().values())
    parts.append(_html_table(header, rows, "provenance"))
    parts.append(f"<p>Total stage time: {total:.1f} s.</p>")
    vers = ", ".join(f"{k} {v}" for k, v in info.versions().items())
    parts.append(f"<p>Versions: {_e(vers)}</p>")
    md += [_md_table(header, rows), f"Total stage time: {total:.1f} s. Versions: {vers}.", ""]
    if info.config_path is not None:
        parts.append(
            f"<details><summary>config ({_e(info.config_path.name)})</summary><pre>"
            f"{_e(info.config_path.read_text())}</pre></details>"
        )
    return "\n".join(parts)


def _caption(path: Path) -> str:
    sweep, _, what = path.stem.partition("_")
    base = SWEEPS[sweep][2] if sweep in SWEEPS else sweep
    return f"{base}: {what.replace('_', ' ')}" if what else base


# ----------------------------------------------------------------------------- the report
def write_run_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    progress: bool = False,
    title: str | None = None,
) -> dict[str, Any]:
    """Write the report of one or more finished runs into ``out_dir`` (see the module docstring).

    Returns a JSON-able dict: ``index_html``, ``index_md``, ``plots`` (paths), ``runs``,
    ``groups`` (run names per group of settings), ``verdict`` (sentences), ``clusterings``,
    ``thumbnails`` (files written), ``pages`` (extra cluster pages), ``n_records``, ``n_rows``.

    Raises:
        DataError: a folder is not a run, or holds no probe results.
    """
    infos = [load_run(r) for r in run_dirs]
    records = check_records(load_records(list(run_dirs)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [out.glob(f"{p}_*.png") for p in (*SWEEPS, "sizes")]
    for stale in [out / THUMBS, out / "training.png", *out.glob("clusters_*.html")] + [
        f for g in figures for f in g
    ]:
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.is_file():
            stale.unlink()
    many = len(infos) > 1
    title = title or (
        f"ClusterFit run {infos[0].name}" if not many else f"ClusterFit: {len(infos)} runs"
    )
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from clusterfit.stages.probe import RANDOM_BN_IMAGES

    random_text = RANDOM_FLOOR_TEXT.format(n=f"{RANDOM_BN_IMAGES:,}")
    md: list[str] = [f"# {title}", "", f"_{stamp}._", ""]
    body: list[str] = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(stamp)}. Values are percent; mean ± std over seeds where a '
        "setting has several.</p>",
        '<nav><a href="#summary">Summary</a><a href="#clusters">Clusters</a>'
        '<a href="#training">Training</a><a href="#sweeps">Plots</a>'
        '<a href="#all">All results</a><a href="#provenance">Provenance</a></nav>',
    ]

    # 1. summary, per group of settings
    groups = group_runs(infos, records) if many else [infos]
    record_seeds: dict[str, list[Any]] = {}
    for r in records:
        seeds_of = record_seeds.setdefault(str(r.get("run")), [])
        if r.get("seed") not in seeds_of:
            seeds_of.append(r.get("seed"))

    def seed_of(info: RunInfo) -> str:
        return ", ".join(map(str, record_seeds.get(info.name) or [info.seed]))

    all_sentences: list[str] = []
    body.append('<h2 id="summary">Summary</h2>')
    md += ["## Summary", ""]
    if many:
        header = ["group", "runs", "seeds"]
        rows = [
            [str(g + 1), ", ".join(i.name for i in grp), ", ".join(seed_of(i) for i in grp)]
            for g, grp in enumerate(groups)
        ]
        intro = (
            f"{len(infos)} runs in {len(groups)} group(s) of identical settings: runs of one "
            "group differ only in the seed and are averaged (mean ± std); different settings "
            "stay apart."
        )
        body += [f"<p>{_e(intro)}</p>", _html_table(header, rows, "groups")]
        md += [intro, "", _md_table(header, rows)]
    for g, grp in enumerate(groups):
        names = {i.name for i in grp}
        recs = [r for r in records if r.get("run") in names or not many]
        seeds = [seed_of(i) for i in grp]
        if many:
            body.append(f"<h3>Group {g + 1}: {_e(', '.join(sorted(names)))}</h3>")
            md += [f"### Group {g + 1}: {', '.join(sorted(names))}", ""]
            dup = len(set(seeds)) < len(seeds)
            if dup:
                body.append(
                    '<p class="note">Two runs of this group share a seed: they are repeats, '
                    "not independent seeds.</p>"
                )
        words = settings_in_words(grp[0], seed=not many)
        if many:
            words.append(f"<b>Seeds</b>: {', '.join(map(str, seeds))}.")
        body.append("<ul>" + "".join(f"<li>{w}</li>" for w in words) + "</ul>")
        md += [f"- {_strip_tags(w)}" for w in words] + [""]
        tables = layer_tables(recs)
        html_v, sentences = _verdict_html(tables)
        all_sentences += sentences
        body.append(html_v)
        md += [f"> {s}" for s in sentences] + [""]
        for t in tables:
            body.append(_layer_table_html(t))
            what = "SVM mAP" if t.metric == "mAP" else f"{t.protocol} probe {t.metric}"
            md += [f"#### {t.target} — {what} (%)", "", _md_table(t.header(), t.rows())]
    body.append(f'<p class="note" id="random-floor">{_e(random_text)}</p>')
    md += [random_text, ""]

    # 2. clusters
    body.append('<h2 id="clusters">Clusters</h2>')
    md += ["## Clusters", ""]
    facts: dict[str, Any] = {"clusterings": [], "thumbnails": 0, "pages": []}
    if not many:
        html_c, facts = _clusters_section(infos[0], out, progress, md)
        body.append(html_c or '<p class="note">No clustering in this run.</p>')
    else:
        header = ["run", "clustering", "K", "NMI", "ARI", "purity", "own report"]
        rows = []
        for info in infos:
            for folder in info.folders("cluster"):
                s = info.stats(folder)
                own = info.path / "report" / "index.html"
                fmt = lambda k, s=s: "–" if s.get(k) is None else f"{float(s[k]):.3f}"  # noqa: E731
                rows.append(
                    [
                        info.name,
                        folder,
                        str(s.get("n_clusters", "")),
                        fmt("nmi"),
                        fmt("ari"),
                        fmt("purity"),
                        os.path.relpath(own, out) if own.is_file() else "–",
                    ]
                )
        body.append(
            '<p class="note">The clusters of each run, with thumbnails, are in that run\'s own '
            "report (<code>clusterfit report RUN</code>).</p>"
        )
        body.append(_html_table(header, rows, "clusterings"))
        md += [_md_table(header, rows)]

    # 3. training
    body.append('<h2 id="training">Training</h2>')
    body.append(_training_section(infos, out, md))

    # 4. the paper's plots
    plots = make_plots(records, out)
    body.append('<h2 id="sweeps">Plots</h2>')
    md += ["## Plots", ""]
    if plots:
        body.append(
            '<div class="figs">'
            + "".join(
                f'<figure><img class="fig sweep" src="{_e(p.name)}" alt="{_e(p.stem)}">'
                f"<figcaption>{_e(_caption(p))}</figcaption></figure>"
                for p in plots
            )
            + "</div>"
        )
        md += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    else:
        body.append('<p class="note">No sweep in these records.</p>')

    # 5. every record
    header, rows = table_rows(records)
    body.append('<h2 id="all">All results</h2>')
    body.append(
        "<details><summary>every probe (model × layer × target × protocol), mean ± std over "
        f"seeds: {len(rows)} rows</summary>{_html_table(header, rows, 'all')}</details>"
    )
    md += ["## All results", "", markdown_table(records)]

    # 6. provenance
    body.append('<h2 id="provenance">Provenance</h2>')
    md += ["## Provenance", ""]
    body += [_provenance(info, md) for info in infos]

    index_html = out / "index.html"
    index_html.write_text(_page(title, "\n".join(body)))
    index_md = out / "index.md"
    index_md.write_text("\n".join(md) + "\n")
    return {
        "index_html": str(index_html),
        "index_md": str(index_md),
        "plots": [str(p) for p in plots],
        "runs": [i.name for i in infos],
        "groups": [[i.name for i in g] for g in groups],
        "verdict": all_sentences,
        "clusterings": facts["clusterings"],
        "thumbnails": facts["thumbnails"],
        "pages": facts["pages"],
        "n_records": len(records),
        "n_rows": len(rows),
    }
