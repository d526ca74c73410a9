"""The paper's claims, one function each, judged on the test-split records of a suite.

Every function takes a :class:`Evidence` (the suite's records split by experiment, its scale and
the K picked on validation) and returns claim rows ``{id, experiment, claim, target, layer,
figure, verdict}``; :data:`CLAIMS` lists them in the order of the claims table. The rules
(:mod:`benchmarks.paper.stats`): a claim holds only when the difference of means exceeds the
spread and the networks compared are clearly above random init; "not testable" says when the
floor withholds a verdict. Choices (K) are read from validation only (:func:`select_k`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.paper.plan import control_run
from benchmarks.paper.scale import (
    CIFAR,
    CIFAR_VAL,
    CONTROL_LAYERS,
    FMNIST,
    LONG_PRE,
    MULTITASK,
    SELFSUP_LAYERS,
    SELFSUP_TASKS,
    TEST_TARGETS,
    VAL_TARGETS,
    Scale,
)
from benchmarks.paper.stats import Stat, at_least, compare, guard, judged, paired, stat


@dataclass
class Evidence:
    """What the claims read: the test-split records by experiment, the scale, the picked K."""

    records: list[dict[str, Any]]
    scale: Scale
    selection: dict[str, Any]

    def of(self, experiment: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r.get("split", "test") == "test" and r.get("experiment") == experiment
        ]

    def k(self, experiment: str) -> int | None:
        return self.selection.get(experiment, {}).get("k")


def _claim(
    cid: str, experiment: str, claim: str, target: str, layer: str, figure: str, verdict: str
) -> dict[str, Any]:
    return {
        "id": cid,
        "experiment": experiment,
        "claim": claim,
        "target": target,
        "layer": layer,
        "figure": figure,
        "verdict": verdict,
    }


def c1_gain_grows_with_noise(ev: Evidence) -> list[dict[str, Any]]:
    """C1 (Fig. 3): the gain N_cf − N_pre grows with the label noise p (largest p against the
    smallest beyond the spread, and no step down beyond the spread)."""
    ctl, k = ev.of("control"), ev.k("control")
    out = []
    if not ev.scale.noise:
        return out
    for target in TEST_TARGETS:
        for layer in CONTROL_LAYERS:
            rnd = stat(ctl, model="random", target=target, layer=layer)
            gains, nets = {}, {}
            for p in sorted(ev.scale.noise):
                pre = stat(ctl, model="N_pre", label_noise=p, target=target, layer=layer)
                cf = stat(ctl, model="N_cf", label_noise=p, k=k, target=target, layer=layer)
                gains[p] = paired(cf, pre)
                nets[f"N_pre(p={p:g})"] = pre
                nets[f"N_cf(p={p:g})"] = cf
            ps = sorted(gains)
            figure = "; ".join(f"p={p:g}: {gains[p].fmt()}" for p in ps)
            if any(gains[p].n == 0 for p in ps) or k is None:
                verdict = "not yet run"
            else:
                verdict, _, _ = compare(gains[ps[-1]], gains[ps[0]])
                drops = [
                    (a, b)
                    for a, b in itertools.pairwise(ps)
                    if gains[a].mean - gains[b].mean > gains[a].std + gains[b].std
                ]
                if verdict.startswith("holds") and drops:
                    verdict = (
                        "does not hold (not monotone: gain falls from p="
                        + ", ".join(f"{a:g} to {b:g}" for a, b in drops)
                        + ")"
                    )
                verdict = guard(verdict, nets, rnd)
            out.append(
                _claim(
                    "C1",
                    "control",
                    "gain of N_cf over N_pre grows with label noise p (Fig. 3)",
                    target,
                    layer,
                    "gain N_cf − N_pre: " + figure,
                    verdict,
                )
            )
    return out


def c2_beats_n_pre(ev: Evidence) -> list[dict[str, Any]]:
    """C2 (Fig. 3): for p >= 50 % N_cf beats N_pre on the aligned target."""
    ctl, k = ev.of("control"), ev.k("control")
    out = []
    for p in [p for p in sorted(ev.scale.noise) if p >= 0.5]:
        for layer in CONTROL_LAYERS:
            w = {"label_noise": p, "target": CIFAR, "layer": layer}
            pre, cf = stat(ctl, model="N_pre", **w), stat(ctl, model="N_cf", k=k, **w)
            rnd = stat(ctl, model="random", target=CIFAR, layer=layer)
            out.append(
                _claim(
                    "C2",
                    "control",
                    f"p = {p:g}: N_cf beats N_pre on the aligned target (Fig. 3)",
                    CIFAR,
                    layer,
                    f"N_cf {cf.fmt()} vs N_pre {pre.fmt()}; random {rnd.fmt()}",
                    judged(cf, pre, ("N_cf", "N_pre"), rnd),
                )
            )
    return out


def c2l_longer_n_pre(ev: Evidence) -> list[dict[str, Any]]:
    """C2L: C2 again with N_pre trained ``long_pre_epochs`` (the diagnostic at 3 seeds)."""
    lng, k = ev.of(LONG_PRE), ev.k("control")
    ctl = ev.of("control")
    out = []
    for p in ev.scale.long_pre_seed_noise:
        for target in TEST_TARGETS:
            for layer in CONTROL_LAYERS:
                w = {"label_noise": p, "target": target, "layer": layer}
                pre, cf = stat(lng, model="N_pre", **w), stat(lng, model="N_cf", k=k, **w)
                rnd = stat(ctl, model="random", target=target, layer=layer)
                out.append(
                    _claim(
                        "C2L",
                        LONG_PRE,
                        f"p = {p:g}, N_pre trained {ev.scale.long_pre_epochs} epochs: N_cf beats "
                        "N_pre (the diagnostic)",
                        target,
                        layer,
                        f"N_cf {cf.fmt()} vs N_pre {pre.fmt()}; random {rnd.fmt()}",
                        judged(cf, pre, ("N_cf", "N_pre"), rnd),
                    )
                )
    return out


def c3_larger_k_helps(ev: Evidence) -> list[dict[str, Any]]:
    """C3: on the non-aligned target larger K helps (one seed per K; the spread is twice the
    std of the N_cf seeds at the picked K)."""
    ctl, k_sel = ev.of("control"), ev.k("control")
    out = []
    for p in sorted(ev.scale.noise):
        for layer in CONTROL_LAYERS:
            w = {"label_noise": p, "target": FMNIST, "layer": layer, "seed": ev.scale.seeds[0]}
            by_k = {k: stat(ctl, model="N_cf", k=k, **w) for k in ev.scale.k_control}
            by_k = {k: s for k, s in by_k.items() if s.n}
            if len(by_k) < len(ev.scale.k_control):
                continue
            at_sel = stat(ctl, model="N_cf", k=k_sel, label_noise=p, target=FMNIST, layer=layer)
            kmin, kmax = min(by_k), max(by_k)
            spread = 2 * at_sel.std
            diff = by_k[kmax].mean - by_k[kmin].mean
            if at_sel.n < 2:
                verdict = "not yet testable (needs the seeds at K* for the spread)"
            elif diff > spread:
                verdict = "holds"
            elif diff >= -spread:
                verdict = "does not hold (difference within the spread)"
            else:
                verdict = "does not hold (reversed beyond the spread)"
            figure = ", ".join(f"K={k}: {s.mean:.2f}" for k, s in sorted(by_k.items()))
            figure += f" (1 seed; spread 2×std of N_cf seeds at K*: {spread:.2f})"
            out.append(
                _claim(
                    "C3",
                    "control",
                    f"p = {p:g}: on the non-aligned target larger K helps (K={kmax} vs K={kmin})",
                    FMNIST,
                    layer,
                    figure,
                    verdict,
                )
            )
    return out


def c4_beats_distillation(ev: Evidence) -> list[dict[str, Any]]:
    """C4 (App. A): distillation (T = 20, α = 0.75) is below ClusterFit."""
    ctl, k = ev.of("control"), ev.k("control")
    out = []
    for p in ev.scale.distill_noise:
        for target in TEST_TARGETS:
            for layer in CONTROL_LAYERS:
                w = {"label_noise": p, "target": target, "layer": layer}
                dis, cf = stat(ctl, model="distill", **w), stat(ctl, model="N_cf", k=k, **w)
                rnd = stat(ctl, model="random", target=target, layer=layer)
                out.append(
                    _claim(
                        "C4",
                        "control",
                        f"p = {p:g}: distillation is below ClusterFit (App. A)",
                        target,
                        layer,
                        f"N_cf {cf.fmt()} vs distill {dis.fmt()}",
                        judged(cf, dis, ("N_cf", "distill"), rnd),
                    )
                )
    return out


def c5_beats_n_pre_2x(ev: Evidence) -> list[dict[str, Any]]:
    """C5 (§3.2): N_cf beats N_pre trained for N_pre's + N_cf's epochs."""
    ctl, k = ev.of("control"), ev.k("control")
    out = []
    for p in sorted(ev.scale.noise):
        for target in TEST_TARGETS:
            w = {"label_noise": p, "target": target, "layer": "res5"}
            two, cf = stat(ctl, model="N_pre_2x", **w), stat(ctl, model="N_cf", k=k, **w)
            if two.n == 0 and not (ev.scale.pre2x and ev.scale.pre2x_all_seeds):
                continue  # one seed of N_pre 2x, at the end of the plan: shown once run
            rnd = stat(ctl, model="random", target=target, layer="res5")
            out.append(
                _claim(
                    "C5",
                    "control",
                    f"p = {p:g}: N_cf beats N_pre 2x (same total epochs; §3.2)",
                    target,
                    "res5",
                    f"N_cf {cf.fmt()} vs N_pre 2x {two.fmt()}",
                    judged(cf, two, ("N_cf", "N_pre 2x"), rnd),
                )
            )
    return out


def s1_s2_selfsup_last_layer(ev: Evidence) -> list[dict[str, Any]]:
    """S1 (Fig. 4, Table 6): N_cf's res5 beats N_pre's; S2: the res4 → res5 drop of N_pre
    shrinks or reverses after ClusterFit."""
    ss, k = ev.of("selfsup"), ev.k("selfsup")
    out = []
    if not ss:
        return out
    for task in SELFSUP_TASKS:
        for target in TEST_TARGETS:
            w = {"objective": task, "target": target}
            rnd5 = stat(ss, model="random", layer="res5", **w)
            pre5 = stat(ss, model="N_pre", layer="res5", **w)
            cf5 = stat(ss, model="N_cf", layer="res5", k=k, **w)
            out.append(
                _claim(
                    "S1",
                    "selfsup",
                    f"{task}: N_cf's res5 beats N_pre's res5 (Fig. 4, Table 6)",
                    target,
                    "res5",
                    f"N_cf {cf5.fmt()} vs N_pre {pre5.fmt()}; random {rnd5.fmt()}",
                    judged(cf5, pre5, ("N_cf", "N_pre"), rnd5),
                )
            )
            pre4 = stat(ss, model="N_pre", layer="res4", **w)
            cf4 = stat(ss, model="N_cf", layer="res4", k=k, **w)
            drop_pre, drop_cf = paired(pre4, pre5), paired(cf4, cf5)
            verdict, _, _ = compare(drop_pre, drop_cf)
            out.append(
                _claim(
                    "S2",
                    "selfsup",
                    f"{task}: the res4 → res5 drop of N_pre shrinks or reverses after ClusterFit",
                    target,
                    "res4→res5",
                    f"drop N_pre {drop_pre.fmt()} vs N_cf {drop_cf.fmt()}",
                    verdict,
                )
            )
    return out


def s3_s4_multitask_and_pre2x(ev: Evidence) -> list[dict[str, Any]]:
    """S3 (App. E): multi-task N_cf at least as good as the better single one; S4: Jigsaw N_cf
    beats Jigsaw N_pre 2x."""
    ss, k = ev.of("selfsup"), ev.k("selfsup")
    out = []
    if not ss:
        return out
    for target in TEST_TARGETS:
        w = {"target": target, "layer": "res5", "k": k}
        singles = {t: stat(ss, model="N_cf", objective=t, **w) for t in SELFSUP_TASKS}
        mt = stat(ss, model="N_cf", objective=MULTITASK, **w)
        best = max(singles, key=lambda t: singles[t].mean if singles[t].n else -1)
        verdict, _, _ = at_least(mt, singles[best])
        out.append(
            _claim(
                "S3",
                "selfsup",
                "multi-task (Jigsaw + RotNet) N_cf is at least as good as the better single one "
                "(App. E)",
                target,
                "res5",
                f"multi-task {mt.fmt()} vs {best} {singles[best].fmt()}",
                verdict,
            )
        )
        two = stat(ss, model="N_pre_2x", objective="jigsaw", target=target, layer="res5")
        if two.n:
            cf = singles["jigsaw"]
            rnd = stat(ss, model="random", objective="jigsaw", target=target, layer="res5")
            out.append(
                _claim(
                    "S4",
                    "selfsup",
                    "jigsaw: N_cf beats N_pre 2x (same total epochs)",
                    target,
                    "res5",
                    f"N_cf {cf.fmt()} vs N_pre 2x {two.fmt()}",
                    judged(cf, two, ("N_cf", "N_pre 2x"), rnd),
                )
            )
    return out


def t1_teacher_beats_selfsup(ev: Evidence) -> list[dict[str, Any]]:
    """T1 (§5.1 in spirit): ClusterFit from a pre-trained EfficientNet-Lite0 (label-free transfer
    into a small ResNet) beats RotNet and Jigsaw trained on the same unlabelled D_cf, with the
    same architecture and epochs; T2: how far it is below the ceiling (supervised, true labels)."""
    tch, k = ev.of("teacher"), ev.k("teacher")
    out = []
    if not tch:
        return out
    for target in TEST_TARGETS:
        w = {"target": target, "layer": "res5"}
        cf = stat(tch, model="N_cf", objective="pretrained", k=k, **w)
        rnd = stat(tch, model="random", objective="rotnet", **w)
        for task in SELFSUP_TASKS:
            ssl = stat(tch, model="N_pre", objective=task, **w)
            out.append(
                _claim(
                    "T1",
                    "teacher",
                    f"N_cf from EfficientNet-Lite0 clusters beats {task} on the same D_cf",
                    target,
                    "res5",
                    f"N_cf {cf.fmt()} vs {task} {ssl.fmt()}; random {rnd.fmt()}",
                    judged(cf, ssl, ("N_cf", task), rnd),
                )
            )
        ceil = stat(tch, model="N_pre", objective="supervised", **w)
        verdict, _, _ = at_least(cf, ceil)
        out.append(
            _claim(
                "T2",
                "teacher",
                "N_cf from EfficientNet-Lite0 clusters reaches supervised training on the true "
                "labels (the ceiling)",
                target,
                "res5",
                f"N_cf {cf.fmt()} vs supervised {ceil.fmt()}",
                verdict,
            )
        )
    return out


#: Every claim, in the order of the claims table.
CLAIMS: Sequence[Callable[[Evidence], list[dict[str, Any]]]] = (
    c1_gain_grows_with_noise,
    c2_beats_n_pre,
    c2l_longer_n_pre,
    c3_larger_k_helps,
    c4_beats_distillation,
    c5_beats_n_pre_2x,
    s1_s2_selfsup_last_layer,
    s3_s4_multitask_and_pre2x,
    t1_teacher_beats_selfsup,
)


def evaluate_claims(
    records: list[dict[str, Any]], scale: Scale, selection: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every claim on the test splits, one row per (claim, target, layer)."""
    ev = Evidence(records, scale, selection)
    return [row for claim in CLAIMS for row in claim(ev)]


# --------------------------------------------------------------------------------------------
# Choices on validation, and what N_pre learnt
# --------------------------------------------------------------------------------------------


def select_k(
    records: list[dict[str, Any]],
    experiment: str,
    ks: Sequence[int],
    seed: int,
    noise: float | None = None,
    n_objectives: int | None = None,
) -> dict[str, Any] | None:
    """The K whose N_cf has the best mean validation top-1 (res5, both validation targets).

    Reads only ``split == "val"`` records of the selection runs: ``seed``, and for the control
    experiment the selection's label noise ``noise`` (other seed-0 runs probe validation too, at
    one K, and must not move the choice); in the teacher suite only the pre-trained N_pre's
    clusterings. None until every K has both validation numbers.
    """
    val = [
        r
        for r in records
        if r.get("split") == "val"
        and r.get("experiment") == experiment
        and r["model"] == "N_cf"
        and r["layer"] == "res5"
        and r["protocol"] == "linear"
        and r["metric"] == "top1"
        and r["seed"] == seed
        and r.get("objective") != MULTITASK
        and (experiment != "teacher" or r.get("objective") == "pretrained")
        and (noise is None or r.get("label_noise") == noise)
    ]
    scores: dict[int, list[float]] = {}
    for r in val:
        scores.setdefault(int(r["k"]), []).append(float(r["value"]))
    if n_objectives is None:
        n_objectives = len(SELFSUP_TASKS) if experiment == "selfsup" else 1
    need = len(VAL_TARGETS) * n_objectives
    if any(len(scores.get(k, [])) < need for k in ks):
        return None
    means = {k: sum(v) / len(v) for k, v in scores.items() if k in ks}
    best = max(sorted(means), key=lambda k: means[k])
    return {
        "k": best,
        "criterion": "mean validation top-1 of N_cf res5 over "
        + ", ".join(VAL_TARGETS)
        + (" and over RotNet and Jigsaw" if experiment == "selfsup" else ""),
        "val_top1_by_k": {str(k): round(v, 3) for k, v in sorted(means.items())},
    }


def selections(records: list[dict[str, Any]], scale: Scale) -> dict[str, Any]:
    """The K of each experiment of ``scale``'s suite, picked on validation (where ready)."""
    out = {}
    s0 = scale.seeds[0]
    todo: list[tuple[str, Sequence[int], float | None]] = []
    if scale.regime == "teacher":
        todo.append(("teacher", scale.k_control, None))
    else:
        todo.append(("control", scale.k_control, scale.select_noise))
        if scale.selfsup:
            todo.append(("selfsup", scale.k_selfsup, None))
    for exp, ks, noise in todo:
        sel = select_k(records, exp, ks, s0, noise)
        if sel is not None:
            out[exp] = sel
    return out


def signal_check(
    records: list[dict[str, Any]], cells: dict[str, Any], scale: Scale
) -> list[dict[str, Any]]:
    """Did N_pre learn the signal in its labels? Train accuracy on its (noisy) labels against
    the clean-predictor level 1 - p (noise goes to the other 9 classes uniformly), and its
    validation probe against random init (seed-0 runs). The curve (train accuracy by epoch)
    where the run kept it."""
    out = []
    for p in sorted(scale.noise):
        run = control_run(p, scale.seeds[0])
        pre = cells.get(run, {}).get("pretrain")
        row: dict[str, Any] = {"label_noise": p, "run": run}
        if pre:
            row["train_acc_noisy_labels"] = pre.get("final_train_acc")
            row["clean_predictor_level"] = round(100 * (1 - p), 2)
            row["images_per_s"] = pre.get("images_per_s_median")
            if pre.get("train_acc_curve"):
                row["train_acc_curve"] = pre["train_acc_curve"]
        for model in ("N_pre", "random"):
            s = stat(
                records,
                model=model,
                label_noise=p,
                target=CIFAR_VAL,
                layer="res5",
                seed=scale.seeds[0],
            )
            if s.n:
                row[f"val_res5_{model}"] = round(s.mean, 2)
        out.append(row)
    return out


def long_pre_check(
    records: list[dict[str, Any]],
    cells: dict[str, Any],
    scale: Scale,
    selection: dict[str, Any],
) -> list[dict[str, Any]]:
    """The diagnostic: N_pre trained the scale's epochs (the seed-0 headline run) against N_pre
    trained ``long_pre_epochs`` (same seed, same images), and the N_cf of each at the picked K.
    Test-split res5 top-1 on both targets, with the gain N_cf − N_pre."""
    out = []
    s0 = scale.seeds[0]
    k = selection.get("control", {}).get("k")
    for p in scale.long_pre_noise:
        for pre_epochs, exp in ((None, "control"), (scale.long_pre_epochs, LONG_PRE)):
            run = control_run(p, s0, pre_epochs)
            pre = cells.get(run, {}).get("pretrain")
            if not pre:
                continue
            row: dict[str, Any] = {
                "label_noise": p,
                "pre_epochs": pre_epochs or scale.epochs,
                "run": run,
                "train_acc_noisy_labels": pre.get("final_train_acc"),
            }
            for target in TEST_TARGETS:
                for model in ("N_pre", "N_cf"):
                    w = {"experiment": exp, "label_noise": p, "target": target, "layer": "res5"}
                    if model == "N_cf":
                        w["k"] = k
                    st = stat(records, model=model, seed=s0, **w)
                    row[f"{target}_{model}"] = round(st.mean, 2) if st.n else None
            out.append(row)
    return out


def gain_vs_memorisation(
    records: list[dict[str, Any]],
    cells: dict[str, Any],
    scale: Scale,
    selection: dict[str, Any],
    layer: str = "res5",
) -> list[dict[str, Any]]:
    """One point per (p, seed) with a finished cell: N_pre's train accuracy on its noisy labels
    and the gain N_cf − N_pre (test split, ``layer``) on each target; the x and y of the plot
    "gain against memorisation"."""
    k = selection.get("control", {}).get("k")
    out = []
    for p in sorted(scale.noise):
        for seed in scale.seeds:
            pre_cell = cells.get(control_run(p, seed), {}).get("pretrain")
            if not pre_cell or k is None:
                continue
            row: dict[str, Any] = {
                "label_noise": p,
                "seed": seed,
                "train_acc_noisy_labels": pre_cell.get("final_train_acc"),
            }
            for target in TEST_TARGETS:
                w = {"experiment": "control", "label_noise": p, "seed": seed}
                w |= {"target": target, "layer": layer, "split": "test"}
                pre = stat(records, model="N_pre", **w)
                cf = stat(records, model="N_cf", k=k, **w)
                row[f"gain_{target}"] = round(cf.mean - pre.mean, 2) if pre.n and cf.n else None
            out.append(row)
    return out


__all__ = [
    "CLAIMS",
    "SELFSUP_LAYERS",
    "Evidence",
    "Stat",
    "evaluate_claims",
    "gain_vs_memorisation",
    "long_pre_check",
    "select_k",
    "selections",
    "signal_check",
]
