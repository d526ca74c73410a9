"""Reports of ClusterFit runs (Yan et al., CVPR 2020).

:func:`write_run_report`: the page a researcher opens after a run (or over several runs): the
settings in words, the layer table and a verdict per target, the clusters with thumbnails of their
members, the training curves, the paper's plots and the provenance (:mod:`.page`).
:func:`write_report`: the table (mean ± std over seeds) and figures of bare probe records.
"""

from __future__ import annotations

import datetime as _dt
import html as _html
from pathlib import Path
from typing import Any

from clusterfit.report.page import write_run_report
from clusterfit.report.plots import SWEEPS, make_plots
from clusterfit.report.tables import (
    aggregate,
    check_records,
    html_table,
    load_records,
    markdown_table,
    table_rows,
)

__all__ = [
    "aggregate",
    "html_table",
    "load_records",
    "make_plots",
    "markdown_table",
    "table_rows",
    "write_report",
    "write_run_report",
]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: 1em 0; border: 1px solid #eee; }
""".strip()


def _caption(path: Path) -> str:
    sweep = path.name.split("_", 1)[0]
    return SWEEPS[sweep][2] if sweep in SWEEPS else path.stem


def write_report(
    records: Any, out_dir: str | Path, *, title: str = "ClusterFit results"
) -> dict[str, Any]:
    """Write ``index.md``, ``index.html`` and the PNG figures of ``records`` into ``out_dir``.

    Args:
        records: result records (a list, or a probe ``results.json`` document), possibly of
            several runs; see :mod:`clusterfit.report.tables` for the schema.
        out_dir: the report folder (created).
        title: page title.

    Returns:
        dict (JSON-able) with ``index_md``, ``index_html`` (paths), ``plots`` (PNG paths),
        ``n_records``, ``n_rows`` (table rows), ``runs`` (run names seen).
    """
    recs = check_records(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(recs, out)
    runs = sorted({str(r["run"]) for r in recs if r.get("run") is not None})
    n_seeds = {a.n for a in aggregate(recs)}
    note = (
        f"{len(recs)} records"
        + (f" from runs {', '.join(runs)}" if runs else "")
        + ". Values in percent; mean ± standard deviation over seeds (ddof=1) where a cell has "
        + f"several (seeds per cell: {', '.join(map(str, sorted(n_seeds))) or '0'})."
    )
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    md = [f"# {title}", "", f"_{stamp}._ {note}", "", markdown_table(recs)]
    for p in plots:
        md += [f"## {_caption(p)}", "", f"![{p.stem}]({p.name})", ""]
    index_md = out / "index.md"
    index_md.write_text("\n".join(md))

    imgs = "\n".join(
        f'<figure><img src="{_html.escape(p.name)}" alt="{_html.escape(p.stem)}">'
        f"<figcaption>{_html.escape(_caption(p))}</figcaption></figure>"
        for p in plots
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        f"<h1>{_html.escape(title)}</h1>\n<p><em>{stamp}.</em> {_html.escape(note)}</p>\n"
        f"{html_table(recs)}\n{imgs}\n</body>\n</html>\n"
    )
    index_html = out / "index.html"
    index_html.write_text(page)
    return {
        "index_md": str(index_md),
        "index_html": str(index_html),
        "plots": [str(p) for p in plots],
        "n_records": len(recs),
        "n_rows": len(table_rows(recs)[1]),
        "runs": runs,
    }
