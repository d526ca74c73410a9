"""The renderer: ``benchmarks/RESULTS.md`` (and the quick / gpu suites' own markdown) and plots.

``RESULTS.md`` is made from the suites' JSON files alone (``benchmarks/results/paper*.json``):
the present regime (the ``full`` suite), the over-fitting regime beside it (claims side by side,
the gain against N_pre's memorisation), the pre-trained teacher, the GPU command, and the
machine-hours of each part. Sections another benchmark wrote into ``RESULTS.md`` (``## Video``)
are kept as they are, after the paper's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from benchmarks.paper.plan import REPO, TEACHER_ARCH, Paths
from benchmarks.paper.scale import SCALES, TEST_TARGETS

# --------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fnum(v: Any) -> str:
    return "–" if v is None else f"{float(v):.2f}"


def rel(path: str | Path, start: Path) -> str:
    return os.path.relpath(path, start)


def test_linear(records: list[dict[str, Any]], experiment: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["experiment"] == experiment
        and r["split"] == "test"
        and r["protocol"] == "linear"
        and r["metric"] == "top1"
    ]


def floor_arch(r: dict[str, Any]) -> str | None:
    """The architecture of a random-init record's network when it is not the suite's small
    ResNet: the probe stage's floor has N_pre's architecture, which in the teacher experiment's
    ``pretrained`` run is EfficientNet-Lite0 (every other run's is ``resnet_cifar``)."""
    teacher = r.get("experiment") == "teacher" and r.get("objective") == "pretrained"
    return TEACHER_ARCH if r["model"] == "random" and teacher else None


def once_per_seed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the random-init floor kept once per (network, seed, layer, target, ...):
    every run of a seed probes the same random network of its architecture, and its copies must
    not shrink the spread. A floor of another architecture (:func:`floor_arch`) is its own row,
    ``random (<arch>)``, never merged with (or hidden behind) the small ResNet's."""
    out, seen = [], set()
    for r in records:
        if r["model"] == "random":
            arch = floor_arch(r)
            key = (
                arch,
                r["seed"],
                r["layer"],
                r["target"],
                r["protocol"],
                r["metric"],
                r.get("shots"),
            )
            if key in seen:
                continue
            seen.add(key)
            if arch is not None:
                r = {**r, "model": f"random ({arch})"}
        out.append(r)
    return out


def reading_lines(path: Path) -> list[str]:
    """A suite's written reading (a markdown file kept beside its JSON), or nothing."""
    return ["", path.read_text().strip()] if path.is_file() else []


def machine_hours(doc: dict[str, Any]) -> tuple[float, bool]:
    """Wall hours the suite's finished stages took (sum of the stages' seconds; trainings'
    ``train_seconds`` where a cell kept no more), and whether every stage is counted."""
    total, partial = 0.0, False
    for stages in doc.get("cells", {}).values():
        for st in stages.values():
            if not isinstance(st, dict):
                continue
            if st.get("seconds") is not None:
                total += float(st["seconds"])
            elif st.get("train_seconds") is not None:
                total += float(st["train_seconds"])
                partial = True
    return total / 3600, partial


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def shrink_png(path: Path, colors: int = 256) -> None:
    """Rewrite a matplotlib PNG with a 256-colour palette (about 2x smaller, same look). An
    octree keeps every line's colour: median cut with fewer colours spent the palette on the
    shaded spread bands and merged distinct line colours into one."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    tmp = path.with_name(f".{path.name}.tmp.png")
    small.save(tmp, optimize=True)
    os.replace(tmp, path)


def write_plots(records: list[dict[str, Any]], report_dir: Path) -> dict[str, list[str]]:
    """``clusterfit report``'s tables and figures, per experiment, on the test-split records."""
    from clusterfit.report import write_report

    out: dict[str, list[str]] = {}
    for exp in ("control", "selfsup", "teacher"):
        recs = once_per_seed(test_linear(records, exp))
        if not recs:
            continue
        folder = report_dir / exp
        res = write_report(recs, folder, title=f"ClusterFit paper benchmark: {exp}")
        pngs = [str(Path(p)) for p in res.get("plots", res.get("figures", []))]
        if not pngs:
            pngs = [str(p) for p in sorted(folder.glob("*.png"))]
        for png in pngs:
            shrink_png(Path(png))
        out[exp] = pngs
    return out


def plot_gain_vs_memorisation(docs: list[dict[str, Any]], path: Path) -> Path | None:
    """The gain N_cf − N_pre (res5, CIFAR-10 and Fashion-MNIST) against N_pre's train accuracy
    on its noisy labels, one point per (p, seed) of every regime."""
    pts = [(d["suite"], r) for d in docs for r in d.get("gain_vs_memorisation") or []]
    pts = [(s, r) for s, r in pts if r.get("train_acc_noisy_labels") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    markers = {"full": "o", "overfit": "^"}
    noise = {r["label_noise"] for _, r in pts}  # one colour per p, one marker per regime
    for ax, target in zip(axes, TEST_TARGETS, strict=True):
        for suite in dict.fromkeys(s for s, _ in pts):
            for p in sorted({r["label_noise"] for s, r in pts if s == suite}):
                xy = [
                    (r["train_acc_noisy_labels"], r[f"gain_{target}"])
                    for s, r in pts
                    if s == suite and r["label_noise"] == p and r.get(f"gain_{target}") is not None
                ]
                if xy:
                    x, y = zip(*xy, strict=True)
                    ax.scatter(
                        x,
                        y,
                        marker=markers.get(suite, "s"),
                        color=f"C{sorted(noise).index(p)}",
                        label=f"{suite}, p={p:g}",
                    )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{target}, res5")
        ax.set_xlabel("N_pre train accuracy on its noisy labels (%)")
    axes[0].set_ylabel("gain N_cf − N_pre (points)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    shrink_png(path)
    return path


def plot_curves(doc: dict[str, Any], path: Path) -> Path | None:
    """N_pre's train accuracy on its noisy labels by epoch (seed 0, every p)."""
    rows = [r for r in doc.get("signal_check") or [] if r.get("train_acc_curve")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for r in rows:
        curve = r["train_acc_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=f"p={r['label_noise']:g}")
        ax.axhline(100 * (1 - r["label_noise"]), color="grey", lw=0.6, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train accuracy on noisy labels (%)")
    ax.set_title("N_pre memorising its labels (dotted: 1 − p)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    shrink_png(path)
    return path


# --------------------------------------------------------------------------------------------
# One suite
# --------------------------------------------------------------------------------------------

NOTES = """\
- Noise model: a fraction p of the labels is replaced by a class drawn uniformly from the *other*
  nine (`clusterfit.pretext.supervised.inject_label_noise`), so a network that predicts the
  clean class agrees with 1 − p of its training labels (not 1 − p + p/9, which holds when the
  noisy label may also be the true one); a train accuracy above 1 − p is memorisation, one near
  10% is a network that learnt nothing.
- N_cf's K is picked on validation (seed-0 selection runs), never on a test split; the test
  splits are probed with the same code afterwards. "Spread" is std(a) + std(b) over seeds
  (ddof = 1); a claim holds only when the difference of means exceeds it, and only when the
  networks it compares are above the random-init network by more than their spreads.
- N_pre 2x and the K sweeps use one seed (seed 0) in the present regime; their verdicts carry
  "(n < 3)". The K-sweep claim (C3) takes as its spread twice the std of the N_cf seeds at the
  picked K. In the over-fitting regime N_pre 2x and distillation run at every seed.
- Budget: depth 10 / width 16 is the network whose training fits (`--throughput` above: width
  32 and depth 18 train slower). When other jobs share the 2 cores, 2 OpenMP
  threads wait on each other at every operation, so the suite picks the thread count per stage
  from the load average. 15,000 images x 10 epochs per network (RotNet 3 epochs of 4
  rotations, Jigsaw 10) and 3 seeds, plus the 40-epoch N_pre diagnostic, make the budget line
  above; the images/s each cell actually saw are in the JSON (`cells`) and their median in
  the "Observed" line.
- The early `signal` step trains N_pre at p = 75% first: its train accuracy on the noisy
  labels against 1 − p = 25% says whether N_pre learns the signal of its labels before the
  rest of the suite is spent on it.
- Run folders live outside git, under `~/.cache/clusterfit/paper-runs/<suite>` (or
  `$CLUSTERFIT_CACHE/paper-runs`; `--runs DIR` to choose): rerunning a suite's command skips
  every stage the run graph finds complete there and resumes an interrupted one from its
  checkpoint. A step whose run folder is absent but which the suite's JSON marks done keeps its
  records from the JSON.
"""


def claims_table(claims: list[dict[str, Any]]) -> str:
    rows = [
        [c["id"], c["claim"], c["target"], c["layer"], c["figure"], c["verdict"]] for c in claims
    ]
    return md_table(["#", "paper's claim", "target", "layer", "our figure", "verdict"], rows)


def scale_lines(doc: dict[str, Any]) -> list[str]:
    """The "Scale and budget" bullets of a suite."""
    s = doc["scale"]
    aug = "crop + flip" if s.get("augment", True) else "no augmentation"
    lines = [
        f"- D_pre = D_cf: {s['n_images']} CIFAR-10 train images (class-balanced, a different "
        f"subset per seed) of the 45,000 left after carving 5,000 for validation; 32x32.",
        f"- Network: `resnet_cifar` depth {s['depth']}, width {s['width']} (stages "
        f"{s['width']}/{2 * s['width']}/{4 * s['width']}/{8 * s['width']} channels), for N_pre, "
        "N_cf, N_pre 2x, distillation and the random-init floor.",
        f"- Training: SGD lr {s['lr']}, batch {s['batch_size']}, cosine, weight decay 5e-4, "
        f"{aug}; supervised N_pre and every N_cf {s['epochs']} epochs"
        + (
            f", RotNet {s['rot_epochs']} epochs (x4 rotations), Jigsaw {s['jig_epochs']} epochs "
            f"({s['jigsaw_permutations']} permutations)"
            if s.get("selfsup", True)
            else ""
        )
        + "; N_pre 2x: N_pre's + N_cf's epochs.",
        f"- Seeds {list(s['seeds'])} for every headline comparison; "
        + (
            "N_pre 2x and distillation at every seed."
            if s.get("pre2x_all_seeds")
            else "K sweeps and N_pre 2x use seed 0."
        ),
        "- Probes: linear on frozen, pooled features (res4, res5"
        + ("; self-supervised conv1..res5" if s.get("selfsup", True) else "")
        + f"), {s['probe_limit']} train / {s['probe_test_limit']} test images per target "
        f"(CIFAR-10; Fashion-MNIST resized to 32); {s['n_updates']} SGD updates, learning rate "
        "picked on a split of the probe's train images; kNN on `pool` as a second opinion "
        "(in the JSON).",
    ]
    if doc.get("throughput"):
        tp = doc["throughput"]
        lines.append(
            f"- Throughput measured here (`--throughput`, {tp.get('threads')} threads, batch 128, "
            f"3x32x32, 1-minute load average {tp.get('load_average_1min', 0):.2f} at its end, "
            f"{tp.get('when')}): "
            + "; ".join(
                f"depth {r['depth']} width {r['width']}: train {r['train_ips']:.0f} img/s, "
                f"inference {r['infer_ips']:.0f} img/s"
                for r in tp.get("rows", [])
            )
            + "."
        )
    if doc.get("budget"):
        lines.append(f"- Budget: {doc['budget']}")
    ips = sorted(
        st["images_per_s_median"]
        for stages in doc.get("cells", {}).values()
        for st in stages.values()
        if isinstance(st, dict) and st.get("images_per_s_median")
    )
    if ips:
        med = ips[len(ips) // 2]
        lines.append(
            f"- Observed: the {len(ips)} trainings finished so far ran at a median of {med:.0f} "
            f"training images/s (range {ips[0]:.0f}-{ips[-1]:.0f}; per cell in the JSON), "
            f"{med / s['train_ips']:.1f}x the planning rate of the budget line."
        )
    return lines


def selection_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["## Choices made on validation (never on a test split)", ""]
    if doc["selection"]:
        for exp, sel in doc["selection"].items():
            lines.append(
                f"- {exp}: K = **{sel['k']}** ({sel['criterion']}; validation top-1 by K: "
                + ", ".join(f"K={k}: {v:.2f}" for k, v in sel["val_top1_by_k"].items())
                + ")"
            )
    else:
        lines.append("- not yet: the selection runs have not finished")
    return lines


def signal_lines(doc: dict[str, Any]) -> list[str]:
    sc = [r for r in doc.get("signal_check") or [] if len(r) > 2]
    if not sc:
        return []
    rows = [
        [
            f"{r['label_noise']:g}",
            fnum(r.get("train_acc_noisy_labels")),
            fnum(r.get("clean_predictor_level")),
            fnum(r.get("val_res5_N_pre")),
            fnum(r.get("val_res5_random")),
        ]
        for r in sc
    ]
    return [
        "",
        "Did N_pre learn the signal in its labels? (seed 0; train accuracy on its noisy "
        "labels, " + ("with" if doc["scale"].get("augment", True) else "without") + " "
        "augmentation, last epoch; a clean-label predictor scores 1 − p)",
        "",
        md_table(
            [
                "p",
                "N_pre train acc (%)",
                "clean predictor (%)",
                "N_pre res5, CIFAR-10 val (%)",
                "random init res5, val (%)",
            ],
            rows,
        ),
    ]


def long_pre_lines(doc: dict[str, Any]) -> list[str]:
    lp = doc.get("long_pre_check") or []
    if not lp:
        return []
    s = doc["scale"]
    lines = [
        "",
        "## Diagnostic: a longer-trained N_pre",
        "",
        "Does the gain of ClusterFit depend on how far N_pre went into fitting its noisy "
        f"labels? Seed 0, the same {s['n_images']} images; N_pre trained {s['epochs']} epochs "
        f"(the headline run) or {s['long_pre_epochs']} epochs, N_cf always {s['epochs']} "
        "epochs at the picked K. Test-split res5 linear top-1 (%), one seed (no spread: "
        "read it as a direction, not a verdict). Where the longer N_pre also ran at the other "
        "seeds, the claims table judges it with spread (C2L).",
        "",
    ]
    header = ["p", "N_pre epochs", "N_pre train acc on noisy labels (%)"]
    for t in TEST_TARGETS:
        header += [f"{t}: N_pre", f"{t}: N_cf", f"{t}: gain"]
    body = []
    for r in lp:
        row = [f"{r['label_noise']:g}", str(r["pre_epochs"]), fnum(r["train_acc_noisy_labels"])]
        for t in TEST_TARGETS:
            a, b = r.get(f"{t}_N_pre"), r.get(f"{t}_N_cf")
            row += [fnum(a), fnum(b), fnum(None if a is None or b is None else b - a)]
        body.append(row)
    lines.append(md_table(header, body))
    return lines


def record_tables(
    doc: dict[str, Any], plots: dict[str, list[str]], md_dir: Path, level: str = "##"
) -> list[str]:
    from clusterfit.report import markdown_table

    lines: list[str] = []
    for exp in ("control", "selfsup", "teacher"):
        recs = once_per_seed(test_linear(doc["records"], exp))
        if not recs:
            continue
        lines += [
            "",
            f"{level} {exp}: linear-probe top-1 (%) on the test splits (mean ± std over seeds)",
            "",
            markdown_table(recs),
        ]
        for png in plots.get(exp, []):
            lines.append(f"![{Path(png).stem}]({rel(png, md_dir)})")
        lines.append("")
    return lines


def render_markdown(doc: dict[str, Any], plots: dict[str, list[str]], paths: Paths) -> str:
    """The markdown of one suite (the present regime's, or quick's / gpu's own file): budget,
    selection, N_pre signal check, claims table (+ its written reading), tables, plots."""
    md_dir = paths.results_md.parent if paths.results_md else REPO
    lines = [
        "# ClusterFit paper benchmark at CPU scale (CIFAR-10)",
        "",
        f"Generated by `{doc['command']}` ({doc['updated']}); {doc['steps_done']} of "
        f"{doc['steps_total']} steps done. Every cell and seed: "
        f"`{rel(paths.results_json, REPO)}`. Rerun the command to resume; finished "
        "stages are skipped.",
        "",
        "## Scale and budget",
        "",
        *scale_lines(doc),
        "",
        *selection_lines(doc),
        *signal_lines(doc),
        "",
        "## Claims",
        "",
        "Linear-probe top-1 (%) on the test splits, mean ± std over seeds. A claim holds only when "
        "the difference of means exceeds the spread (std + std) and the networks compared are "
        "clearly above the random-init network.",
        "",
        claims_table(doc["claims"]),
    ]
    lines += reading_lines(paths.results_json.with_name(paths.results_json.stem + "_reading.md"))
    lines += long_pre_lines(doc)
    lines += record_tables(doc, plots, md_dir)
    lines += ["", "## Notes", "", NOTES]
    if doc.get("pilot_notes"):
        lines += [doc["pilot_notes"], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# RESULTS.md: the suites together
# --------------------------------------------------------------------------------------------


def _claim_key(c: dict[str, Any]) -> tuple:
    return (c["id"], c["claim"], c["target"], c["layer"])


def side_by_side(present: dict[str, Any] | None, overfit: dict[str, Any]) -> str:
    """C1, C2, C4, C5 in the present regime and in the over-fitting regime, row by row."""
    ids = ("C1", "C2", "C4", "C5")
    old = {_claim_key(c): c for c in (present or {}).get("claims", []) if c["id"] in ids}
    new = {_claim_key(c): c for c in overfit.get("claims", []) if c["id"] in ids}
    rows = []
    keys = list(dict.fromkeys([*old, *new]))
    for key in sorted(keys, key=lambda k: (ids.index(k[0]), keys.index(k))):
        a, b = old.get(key), new.get(key)
        rows.append(
            [
                key[0],
                key[1],
                key[2],
                key[3],
                a["verdict"] if a else "not run in this regime",
                b["figure"] if b else "–",
                b["verdict"] if b else "not run in this regime",
            ]
        )
    return md_table(
        [
            "#",
            "paper's claim",
            "target",
            "layer",
            "present regime (under-trained N_pre)",
            "over-fitting regime: figure",
            "over-fitting regime: verdict",
        ],
        rows,
    )


def overfit_section(
    doc: dict[str, Any], present: dict[str, Any] | None, plots: dict[str, list[str]], md: Path
) -> list[str]:
    json_path = REPO / "benchmarks" / "results" / "paper_overfit.json"
    lines = [
        "",
        "## The over-fitting regime (§3.2, Fig. 3)",
        "",
        f"`{doc['command']}` ({doc['updated']}); {doc['steps_done']} of {doc['steps_total']} "
        f"steps done; every cell: `{rel(json_path, REPO)}`. The mechanism of §3.2 is an N_pre "
        "whose last layers fit the noise of its labels; the present regime's N_pre does not "
        "(above). Here N_pre trains on a small D_pre, many epochs, without augmentation, until "
        "it memorises its noisy labels; D_cf = D_pre; every other rule is the same.",
        "",
        *scale_lines(doc),
        "",
        *["#" + ln if ln.startswith("## ") else ln for ln in selection_lines(doc)],
        *signal_lines(doc),
    ]
    curve = doc.get("_curve_png")
    if curve:
        lines += [f"![N_pre train accuracy by epoch]({rel(curve, md)})", ""]
    if doc.get("pilot"):
        lines += ["", "Pilot (recipe search, seed 0, pretraining only):", "", doc["pilot"], ""]
    lines += [
        "",
        "### Claims in both regimes",
        "",
        "The same rule in both: the difference of means beyond the spread, both networks clearly "
        "above random init; C4 and C5 with n = 3 on both sides here.",
        "",
        side_by_side(present, doc),
    ]
    gm = doc.get("gain_vs_memorisation") or []
    if gm:
        lines += [
            "",
            "### Gain against memorisation",
            "",
            "One point per (p, seed): N_pre's train accuracy on its noisy labels (last epoch) and "
            "the gain N_cf − N_pre at res5 on the test splits, both regimes.",
            "",
        ]
        png = doc.get("_gain_png")
        if png:
            lines.append(f"![gain against memorisation]({rel(png, md)})")
    lines += reading_lines(REPO / "benchmarks" / "results" / "paper_overfit_reading.md")
    other = [c for c in doc["claims"] if c["id"] not in ("C1", "C2", "C4", "C5")]
    if other:
        lines += ["", "### Other claims in this regime", "", claims_table(other)]
    lines += record_tables(doc, plots, md, level="###")
    return lines


def teacher_section(doc: dict[str, Any] | None, plots: dict[str, list[str]], md: Path) -> list:
    from benchmarks.paper.plan import TEACHER_INPUT, budget_line, build_plan

    scale = SCALES["teacher"]
    lines = [
        "",
        "## A real pre-trained teacher (§5.1 in spirit)",
        "",
        "N_pre = the ImageNet EfficientNet-Lite0 shipped by the `[efficientnet]` extra, taken as "
        "it is (`pretrain.objective=pretrained pretrain.arch=efficientnet_lite0`); D_cf = "
        f"{scale.n_images:,} CIFAR-10 train images **without labels**, at 32 px, which "
        f"EfficientNet-Lite0 sees upsampled to {TEACHER_INPUT} px (`pretrain.input_size="
        f"{TEACHER_INPUT}`, for its clusters and its own probes); N_cf = `resnet_cifar` (depth "
        "10, width 16) from scratch at 32 px on K clusters, K in "
        f"{list(scale.k_control)} picked on validation. Compared on the same D_cf, architecture "
        "and epochs: RotNet and Jigsaw trained on D_cf, supervised training on CIFAR-10's true "
        "labels (the ceiling), random init; probes on CIFAR-10 and Fashion-MNIST. Command: "
        f"`{scale.command}`; plan: {budget_line(scale, build_plan(scale))}",
        "",
    ]
    if not doc or not doc.get("records"):
        lines.append(
            "Not run yet on CIFAR-10 (its plan does not fit beside the over-fitting regime on "
            "the shared 2-core machine). The path is checked end to end on synthetic images at "
            "tiny sizes: the four objectives train, EfficientNet-Lite0's clusters are fitted by "
            "`resnet_cifar`, K is picked on validation and the claims T1 (N_cf beats RotNet and "
            "Jigsaw on the same D_cf) and T2 (N_cf against the supervised ceiling) are judged."
        )
        return lines
    lines += [
        f"{doc['steps_done']} of {doc['steps_total']} steps done ({doc['updated']}).",
        "",
        *["#" + ln if ln.startswith("## ") else ln for ln in selection_lines(doc)],
        "",
        claims_table(doc["claims"]),
    ]
    lines += reading_lines(REPO / "benchmarks" / "results" / "paper_teacher_reading.md")
    lines += record_tables(doc, plots, md, level="###")
    return lines


GPU_SCRIPT = "benchmarks/paper_gpu.sh"


def gpu_section(doc: dict[str, Any] | None, md: Path) -> list[str]:
    from benchmarks.paper.plan import budget_line, build_plan

    gpu = SCALES["gpu"]
    lines = [
        "",
        "## At GPU scale (prepared, not run)",
        "",
        f"The control experiment with all {gpu.n_images:,} CIFAR-10 training images, a "
        f"torchvision ResNet-18 at 32 px, {gpu.epochs} epochs without augmentation, p in "
        f"{{{', '.join(f'{p:g}' for p in sorted(gpu.noise))}}}, N_cf at K = "
        f"{gpu.k_control[0]}: `bash {GPU_SCRIPT}` (it runs `python -m benchmarks.paper --gpu` "
        "offline, stops at 540 s and resumes on its next call; the header of the script says "
        "which data files to carry to the device). Plan: "
        f"{budget_line(gpu, build_plan(gpu))} Within 10 minutes it needs about "
        "27,000 training images/s; at a lower rate a second call finishes it. Its figures land "
        "in `benchmarks/results/paper_gpu.{json,md}`.",
        "",
    ]
    if doc and doc.get("records"):
        lines.append(
            f"Last run: {doc['updated']}, {doc['steps_done']} of {doc['steps_total']} steps; "
            f"see `{rel(REPO / 'benchmarks' / 'results' / 'paper_gpu.md', REPO)}`."
        )
    else:
        lines.append(
            "No accelerator was lent to the sessions that ran this suite, so this part has not "
            "run; the script is ready."
        )
    return lines


def hours_section(docs: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = []
    for name, label in (
        ("full", "present regime (control + self-supervised)"),
        ("overfit", "over-fitting regime"),
        ("teacher", "pre-trained teacher"),
        ("gpu", "GPU scale"),
    ):
        d = docs.get(name)
        if not d or not d.get("cells"):
            rows.append([label, "0 (not run)", "–"])
            continue
        h, partial = machine_hours(d)
        note = "trainings only (the older cells kept no other stage times)" if partial else "all"
        rows.append([label, f"{h:.2f}", note])
    rows.insert(2, ["over-fitting regime: the recipe pilot", "0.15", "two pretrainings"])
    return [
        "",
        "## Machine time",
        "",
        "Wall hours of the finished stages on the shared 2-core machine (sum of each stage's "
        "`meta.json` seconds, 1-2 threads each). Suites sometimes ran side by side with each "
        "other or with other work, so these hours are upper bounds of their own cost.",
        "",
        md_table(["part", "hours", "stages counted"], rows),
    ]


PAPER_SECTIONS = re.compile(
    r"^## (Scale and budget|Choices made|Claims|What the figures say|Diagnostic|control:|selfsup:|"
    r"teacher:|Notes|The over-fitting regime|A real pre-trained teacher|At GPU scale|"
    r"Machine time)"
)


def foreign_sections(text: str) -> str:
    """The ``## `` sections of an existing RESULTS.md that the paper renderer does not write
    (e.g. ``## Video``), to be kept as they are."""
    keep, cur, take = [], [], False
    for line in text.splitlines():
        if line.startswith("## "):
            if take:
                keep += cur
            cur, take = [line], not PAPER_SECTIONS.match(line)
        elif line.startswith("# "):
            if take:
                keep += cur
            cur, take = [], False
        else:
            cur.append(line)
    if take:
        keep += cur
    return "\n".join(keep).strip()


def results_md(paths: Paths, docs: dict[str, dict[str, Any] | None], plots: dict) -> str:
    """RESULTS.md: the present regime, then the over-fitting regime, the teacher, the GPU
    command and the machine time; then the sections other benchmarks wrote."""
    md = paths.results_md.parent if paths.results_md else REPO
    full = docs.get("full")
    full_paths = Paths.for_scale(SCALES["full"])
    if full:
        text = render_markdown(full, plots.get("full", {}), full_paths)
    else:
        text = "# ClusterFit paper benchmark at CPU scale (CIFAR-10)\n"
    lines = [text.rstrip()]
    if docs.get("overfit"):
        lines += overfit_section(docs["overfit"], full, plots.get("overfit", {}), md)
    lines += teacher_section(docs.get("teacher"), plots.get("teacher", {}), md)
    lines += gpu_section(docs.get("gpu"), md)
    lines += hours_section(docs)
    old = paths.results_md.read_text() if paths.results_md and paths.results_md.is_file() else ""
    kept = foreign_sections(old)
    if kept:
        lines += ["", kept]
    return "\n".join(lines).rstrip() + "\n"


def existing_plots(report_dir: Path) -> dict[str, list[str]]:
    out = {}
    for exp in ("control", "selfsup", "teacher"):
        pngs = sorted((report_dir / exp).glob("*.png"))
        if pngs:
            out[exp] = [str(p) for p in _report_order(pngs)]
    return out


def _report_order(pngs: list[Path]) -> list[Path]:
    """``clusterfit report``'s order: layers, k, noise plots."""
    order = {"layers": 0, "k": 1, "noise": 2}
    return sorted(pngs, key=lambda p: (order.get(p.stem.split("_")[0], 9), p.stem))


def write_all(paths: Paths, scale: Any, doc: dict[str, Any], make_plots: bool = True) -> None:
    """After a suite's JSON is written: its plots, then its markdown (quick, gpu) or
    RESULTS.md with every suite (full, overfit, teacher)."""
    from benchmarks.paper.runner import load_doc

    plots = {}
    if make_plots and doc["records"]:
        plots = write_plots(doc["records"], paths.report_dir)
    if paths.results_md is None:
        return
    if paths.results_md.name != "RESULTS.md":
        paths.results_md.write_text(render_markdown(doc, plots, paths))
        return
    docs: dict[str, dict[str, Any] | None] = {}
    all_plots: dict[str, dict[str, list[str]]] = {}
    for name in ("full", "overfit", "teacher", "gpu"):
        p = Paths.for_scale(SCALES[name])
        docs[name] = doc if name == scale.name else (load_doc(p) or None)
        all_plots[name] = plots if name == scale.name and plots else existing_plots(p.report_dir)
    results = paths.results_json.parent
    live = [d for d in (docs.get("full"), docs.get("overfit")) if d]
    if make_plots and docs.get("overfit"):
        gain_png = results / "paper_overfit_report" / "gain_vs_memo.png"
        gain = plot_gain_vs_memorisation(live, gain_png)
        curve = None
        if docs.get("overfit"):
            curve = plot_curves(docs["overfit"], results / "paper_overfit_report" / "curves.png")
    else:
        gain = results / "paper_overfit_report" / "gain_vs_memo.png"
        curve = results / "paper_overfit_report" / "curves.png"
        gain = gain if gain.is_file() else None
        curve = curve if curve.is_file() else None
    if docs.get("overfit"):
        docs["overfit"] = {**docs["overfit"], "_gain_png": gain, "_curve_png": curve}
    paths.results_md.write_text(results_md(paths, docs, all_plots))
