"""The paper benchmark's plan and claim evaluator (``benchmarks/paper/``): no training, no data."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def paper():
    import benchmarks.paper

    return benchmarks.paper


def _headline_seeds(plan, paper):
    """{(experiment, objective, noise): seeds} of the cells that run at the selected K."""
    out: dict[tuple, set[int]] = {}
    for s in plan:
        if paper.SELECT in s.ks or s.role == "select":
            out.setdefault((s.experiment, s.objective, s.noise), set()).add(s.seed)
    return out


def test_full_plan_has_three_seeds_for_every_headline_comparison(paper):
    scale = paper.FULL
    plan = paper.build_plan(scale)
    seeds = _headline_seeds(plan, paper)
    for p in (0.0, 0.25, 0.5, 0.75):
        assert seeds[("control", "supervised", p)] >= {0, 1, 2}, p
    for task in ("rotnet", "jigsaw", "jigsaw+rotnet"):
        assert seeds[("selfsup", task, None)] >= {0, 1, 2}, task
    # distillation at p = 50 with 3 seeds; N_pre 2x in both experiments
    assert {s.seed for s in plan if s.distill and s.noise == 0.5} == {0, 1, 2}
    assert {s.experiment for s in plan if s.pre2x} == {"control", "selfsup"}
    # the paper's K grids
    assert set(scale.k_control) == {10, 50, 200, 1000}
    assert set(scale.k_selfsup) == {100, 1000}


def test_plan_order_selection_first_and_headlines_before_sweeps(paper):
    plan = paper.build_plan(paper.FULL)
    # first the early check that N_pre learns at the highest noise (pretrain only), then the
    # validation sweep that picks K
    assert plan[0].role == "signal" and plan[0].only == "pretrain" and plan[0].noise == 0.75
    assert plan[1].role == "select" and plan[1].experiment == "control"
    roles = [s.role for s in plan]
    last_headline = max(i for i, r in enumerate(roles) if r == "headline")
    first_sweep = min(i for i, r in enumerate(roles) if r == "ksweep")
    assert last_headline < first_sweep
    # a step that uses the selected K comes after the selection run of its experiment
    for exp in ("control", "selfsup"):
        first_select = min(
            i for i, s in enumerate(plan) if s.experiment == exp and s.role == "select"
        )
        first_use = min(
            i for i, s in enumerate(plan) if s.experiment == exp and paper.SELECT in s.ks
        )
        assert first_select < first_use
    # multi-task cells come after both single-task N_pre of their seed
    for i, s in enumerate(plan):
        if s.role == "multitask":
            before = {(t.objective, t.seed) for t in plan[:i]}
            assert ("rotnet", s.seed) in before and ("jigsaw", s.seed) in before


def test_quick_and_full_grids_differ(paper):
    q, f = paper.QUICK, paper.FULL
    assert q.n_images < f.n_images and q.epochs < f.epochs
    assert len(q.noise) == 2 and len(q.seeds) == 1 and len(q.k_control) == 2
    assert len(paper.build_plan(q)) < len(paper.build_plan(f))
    assert paper.Paths.for_scale(q).results_json != paper.Paths.for_scale(f).results_json
    assert paper.Paths.for_scale(q).runs != paper.Paths.for_scale(f).runs
    # the quick grid is estimated well under 15 minutes
    plan = paper.build_plan(q)
    assert sum(paper.estimate(plan, q, {"control": 50, "selfsup": 10})) < 15 * 60


def test_estimate_counts_shared_n_pre_once(paper):
    s = paper.FULL
    a = paper.Step("a", "run", "control", "select", "supervised", 0, (10, 50), noise=0.5)
    b = paper.Step("b", "run", "control", "headline", "supervised", 0, (paper.SELECT,), noise=0.5)
    t = paper.estimate([a, b], s, {"control": 50, "selfsup": 100})
    assert t[1] == 0.0  # K=50 is already in the sweep of the same run
    t2 = paper.estimate([b], s, {"control": 200, "selfsup": 100})
    assert t2[0] > 0


def _rec(model, value, seed, **kw):
    base = {
        "model": model,
        "layer": "res5",
        "target": "cifar10",
        "protocol": "linear",
        "metric": "top1",
        "value": value,
        "seed": seed,
        "k": None,
        "label_noise": 0.5,
        "objective": "supervised",
        "experiment": "control",
        "split": "test",
    }
    return base | kw


def test_compare_holds_only_beyond_the_spread(paper):
    S = paper.Stat
    # means 60 vs 55, stds 1 and 1: difference 5 > spread 2
    assert paper.compare(S({0: 59, 1: 60, 2: 61}), S({0: 54, 1: 55, 2: 56}))[0] == "holds"
    # means 60 vs 58, stds 2 and 2: difference 2 < spread 4
    v, diff, spread = paper.compare(S({0: 58, 1: 60, 2: 62}), S({0: 56, 1: 58, 2: 60}))
    assert v.startswith("does not hold") and diff == pytest.approx(2) and spread == pytest.approx(4)
    # reversed
    assert "reversed" in paper.compare(S({0: 50, 1: 50.5, 2: 51}), S({0: 60, 1: 60, 2: 61}))[0]
    # one seed: no spread measured, the verdict says so
    assert "(n < 3)" in paper.compare(S({0: 60, 1: 61, 2: 60}), S({0: 50}))[0]
    assert paper.compare(S({0: 60}), S({0: 50}))[0] == (
        "not yet judged (1 seed each; difference +10.00)"
    )
    assert paper.at_least(S({0: 49.5}), S({0: 50}))[0].startswith("not yet judged")
    assert paper.compare(S(), S({0: 50}))[0] == "not yet run"
    # at-least-as-good
    assert paper.at_least(S({0: 60, 1: 61, 2: 62}), S({0: 60, 1: 61, 2: 61}))[0].startswith("holds")
    assert paper.at_least(S({0: 50, 1: 51, 2: 52}), S({0: 60, 1: 61, 2: 62}))[0].startswith(
        "does not hold"
    )


def test_stat_mean_std_and_paired(paper):
    s = paper.stat([_rec("N_cf", v, i) for i, v in enumerate([1.0, 2.0, 4.0])], model="N_cf")
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    d = paper.paired(paper.Stat({0: 5.0, 1: 7.0, 3: 1.0}), paper.Stat({0: 1.0, 1: 2.0, 2: 9.0}))
    assert d.by_seed == {0: 4.0, 1: 5.0}


def _claims(paper, records, k=50):
    scale = paper.FULL
    return paper.evaluate_claims(records, scale, {"control": {"k": k}})


def test_claim_c2_holds_beyond_spread_and_guarded_by_random(paper):
    recs = []
    for seed in range(3):
        recs += [
            _rec("N_pre", 50 + seed * 0.5, seed, label_noise=0.75),
            _rec("N_cf", 56 + seed * 0.5, seed, label_noise=0.75, k=50),
            _rec("random", 40 + seed * 0.2, seed, label_noise=0.75),
        ]
    c2 = [
        c
        for c in _claims(paper, recs)
        if c["id"] == "C2" and "0.75" in c["claim"] and c["layer"] == "res5"
    ]
    assert len(c2) == 1 and c2[0]["verdict"] == "holds"
    # N_pre at the random-init level: the comparison is not testable
    low = [r | {"value": 40.1 + r["seed"] * 0.2} if r["model"] == "N_pre" else r for r in recs]
    c2 = [
        c
        for c in _claims(paper, low)
        if c["id"] == "C2" and "0.75" in c["claim"] and c["layer"] == "res5"
    ]
    assert c2[0]["verdict"].startswith("not testable")
    assert c2[0]["verdict"].endswith("(the difference: holds)")
    # within the spread: does not hold
    noisy = [r | {"value": 48 + 4 * r["seed"]} if r["model"] == "N_cf" else r for r in recs]
    c2 = [
        c
        for c in _claims(paper, noisy)
        if c["id"] == "C2" and "0.75" in c["claim"] and c["layer"] == "res5"
    ]
    assert c2[0]["verdict"].startswith("does not hold")


def test_claim_c1_gain_grows_with_noise(paper):
    recs = []
    gains = {0.0: -2.0, 0.25: 0.0, 0.5: 3.0, 0.75: 6.0}
    for p, g in gains.items():
        for seed in range(3):
            recs += [
                _rec("N_pre", 60 - 10 * p + 0.3 * seed, seed, label_noise=p),
                _rec("N_cf", 60 - 10 * p + g + 0.3 * seed, seed, label_noise=p, k=50),
                _rec("random", 35 + 0.1 * seed, seed, label_noise=p),
            ]
    c1 = [
        c
        for c in _claims(paper, recs)
        if c["id"] == "C1" and c["target"] == "cifar10" and c["layer"] == "res5"
    ]
    assert c1[0]["verdict"] == "holds"
    # a gain that shrinks with p does not hold
    flipped = [
        r | {"value": r["value"] - 2 * gains[r["label_noise"]]} if r["model"] == "N_cf" else r
        for r in recs
    ]
    c1 = [
        c
        for c in _claims(paper, flipped)
        if c["id"] == "C1" and c["target"] == "cifar10" and c["layer"] == "res5"
    ]
    assert c1[0]["verdict"].startswith("does not hold")
    # missing noise levels: not yet run
    part = [r for r in recs if r["label_noise"] != 0.25]
    c1 = [c for c in _claims(paper, part) if c["id"] == "C1"]
    assert all(c["verdict"] == "not yet run" for c in c1)


def test_select_k_reads_validation_records_only(paper):
    recs = []
    for k, val, test in ((10, 40.0, 70.0), (50, 45.0, 60.0)):
        for target in ("cifar10-val", "fashion-mnist-val"):
            recs.append(_rec("N_cf", val, 0, k=k, target=target, split="val"))
        recs.append(_rec("N_cf", test, 0, k=k, target="cifar10", split="test"))
    sel = paper.select_k(recs, "control", (10, 50), seed=0)
    assert sel["k"] == 50  # the test split prefers K=10; validation picks 50
    assert paper.select_k(recs[:2], "control", (10, 50), seed=0) is None


def test_select_k_ignores_validation_probes_of_other_noise_levels(paper):
    """Seed-0 headline runs at other p probe validation at one K: the choice must not move."""
    recs = []
    for k, val in ((10, 50.0), (50, 49.0)):
        for target in ("cifar10-val", "fashion-mnist-val"):
            recs.append(_rec("N_cf", val, 0, k=k, target=target, split="val"))
    for target in ("cifar10-val", "fashion-mnist-val"):  # p = 0.75 at K = 10 only, much lower
        recs.append(_rec("N_cf", 30.0, 0, k=10, target=target, split="val", label_noise=0.75))
    sel = paper.select_k(recs, "control", (10, 50), seed=0, noise=0.5)
    assert sel["k"] == 10
    assert sel["val_top1_by_k"] == {"10": 50.0, "50": 49.0}


def test_make_config_builds_valid_runs(paper, tmp_path):
    from clusterfit.config import RunConfig

    class Data:
        cifar_csv = tmp_path / "c.csv"
        fmnist_csv = tmp_path / "f.csv"

    paths = paper.Paths(tmp_path / "runs", tmp_path / "r.json", None, tmp_path / "rep")
    plan = paper.build_plan(paper.FULL)
    for step in plan:
        cfg = paper.make_config(step, paper.FULL, Data, paths, [50])
        assert isinstance(cfg, RunConfig)
        assert cfg.data.limit == paper.FULL.n_images and cfg.seed == step.seed
        names = [t.name for t in cfg.probe.targets]
        assert names[:2] == ["cifar10", "fashion-mnist"]
        assert ("cifar10-val" in names) == (step.seed == 0 and step.role != "diagnose")
        # test targets read the test split; validation targets the split carved from train
        for t in cfg.probe.targets:
            assert t.train_split == "train"
            assert t.test_split == ("val" if t.name.endswith("-val") else "test")
        if step.role == "multitask":
            assert cfg.pretrain.objective == "checkpoint" and len(cfg.multitask) == 1
        if step.experiment == "control":
            assert cfg.pretrain.label_noise == step.noise
            assert cfg.fit.train.epochs == paper.FULL.epochs
            # same epochs for N_cf, except in the longer-N_pre diagnostic
            assert cfg.pretrain.train.epochs == (step.pre_epochs or paper.FULL.epochs)


def test_filter_plan(paper):
    plan = paper.build_plan(paper.FULL)
    ctl = paper.filter_plan(plan, ["control"])
    assert ctl and all(s.experiment == "control" for s in ctl)
    ss = paper.filter_plan(plan, ["selfsup"])
    assert ss and all(s.experiment == "selfsup" for s in ss)
    assert paper.filter_plan(plan, []) == plan


def test_choose_threads_discounts_this_process_own_threads(paper, monkeypatch):
    import torch
    from benchmarks.paper import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # the previous stage ran 2 threads and nothing else runs: load ~2 is our own
        monkeypatch.setattr(runner.os, "getloadavg", lambda: (2.1, 2.0, 2.0))
        assert paper.choose_threads(None) == 2
        # two other busy processes besides our 2 threads
        monkeypatch.setattr(runner.os, "getloadavg", lambda: (4.2, 4.0, 4.0))
        assert paper.choose_threads(None) == 1
        torch.set_num_threads(1)
        monkeypatch.setattr(runner.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
        assert paper.choose_threads(None) == 2
        assert paper.choose_threads(3) == 3
    finally:
        torch.set_num_threads(before)


def test_long_pre_diagnostic_is_kept_apart_from_the_headline_cells(paper):
    scale = paper.FULL
    plan = paper.build_plan(scale)
    diag = [st for st in plan if st.role == "diagnose"]
    first = [st for st in diag if st.seed == 0]
    assert [st.noise for st in first] == list(scale.long_pre_noise)
    # the other seeds only at long_pre_seed_noise, and last in the plan (after every headline,
    # baseline and sweep step of the issue)
    others = [(st.noise, st.seed) for st in diag if st.seed != 0]
    assert others == [(p, s) for p in scale.long_pre_seed_noise for s in scale.seeds[1:]]
    assert [st.role for st in plan[-len(others) :]] == ["diagnose"] * len(others)
    for st in diag:
        assert st.pre_epochs == scale.long_pre_epochs and not st.validation
        assert st.run == paper.control_run(st.noise, st.seed, scale.long_pre_epochs)
        assert st.run != paper.control_run(st.noise, st.seed) and st.tag == "control-long"
    # its records carry their own experiment tag, so the claims never see them
    recs = [
        _rec("N_pre", 50.0, 0, label_noise=0.75),
        _rec("N_cf", 52.0, 0, k=10, label_noise=0.75),
        _rec("N_pre", 40.0, 0, label_noise=0.75, experiment="control-long"),
        _rec("N_cf", 49.0, 0, k=10, label_noise=0.75, experiment="control-long"),
    ]
    cells = {
        paper.control_run(0.75, 0): {"pretrain": {"final_train_acc": 15.0}},
        paper.control_run(0.75, 0, 40): {"pretrain": {"final_train_acc": 30.0}},
    }
    rows = paper.long_pre_check(recs, cells, scale, {"control": {"k": 10}})
    assert [(r["pre_epochs"], r["train_acc_noisy_labels"]) for r in rows] == [
        (10, 15.0),
        (40, 30.0),
    ]
    assert (rows[0]["cifar10_N_pre"], rows[0]["cifar10_N_cf"]) == (50.0, 52.0)
    assert (rows[1]["cifar10_N_pre"], rows[1]["cifar10_N_cf"]) == (40.0, 49.0)
    assert paper.stat(recs, model="N_pre", experiment="control", label_noise=0.75).mean == 50.0


def test_claim_c2l_reads_only_the_longer_n_pre_runs(paper):
    p, long = paper.FULL.long_pre_seed_noise[0], paper.LONG_PRE
    recs = []
    for seed in range(3):
        recs += [
            # headline runs (10-epoch N_pre): N_cf behind; they must not enter C2L
            _rec("N_pre", 50 + seed, seed, label_noise=p),
            _rec("N_cf", 45 + seed, seed, label_noise=p, k=10),
            _rec("random", 38 + 0.1 * seed, seed, label_noise=p),
            # the longer N_pre: N_cf ahead by 3 with stds of 0.5
            _rec("N_pre", 52 + 0.5 * seed, seed, label_noise=p, experiment=long),
            _rec("N_cf", 55 + 0.5 * seed, seed, label_noise=p, k=10, experiment=long),
        ]
    rows = [
        c
        for c in paper.evaluate_claims(recs, paper.FULL, {"control": {"k": 10}})
        if c["id"] == "C2L" and c["target"] == "cifar10" and c["layer"] == "res5"
    ]
    assert len(rows) == 1 and rows[0]["verdict"] == "holds"
    assert rows[0]["figure"].startswith("N_cf 55.50 ± 0.50 (n=3) vs N_pre 52.50 ± 0.50 (n=3)")
    c2 = [
        c
        for c in paper.evaluate_claims(recs, paper.FULL, {"control": {"k": 10}})
        if c["id"] == "C2" and f"p = {p:g}" in c["claim"] and c["layer"] == "res5"
    ]
    assert "reversed" in c2[0]["verdict"]
    # only seed 0 of the longer runs so far: the verdict says the spread is not measured
    one = [r for r in recs if r["experiment"] != long or r["seed"] == 0]
    rows = [
        c
        for c in paper.evaluate_claims(one, paper.FULL, {"control": {"k": 10}})
        if c["id"] == "C2L" and c["target"] == "cifar10" and c["layer"] == "res5"
    ]
    assert rows[0]["verdict"] == "not yet judged (1 seed each; difference +3.00)"


def test_results_md_includes_the_written_reading_when_there_is_one(paper, tmp_path):
    import dataclasses

    paths = paper.Paths(
        runs=tmp_path / "runs",
        results_json=tmp_path / "paper.json",
        results_md=tmp_path / "RESULTS.md",
        report_dir=tmp_path / "report",
    )
    doc = {
        "scale": dataclasses.asdict(paper.FULL),
        "command": "python -m benchmarks.paper",
        "updated": "now",
        "steps_done": 0,
        "steps_total": 1,
        "selection": {},
        "signal_check": [],
        "claims": [],
        "records": [],
        "cells": {},
    }
    from benchmarks.paper.render import render_markdown

    md = render_markdown(doc, {}, paths)
    assert "## Claims" in md and "## What the figures say" not in md
    (tmp_path / "paper_reading.md").write_text("## What the figures say\n\nC2 does not hold.\n")
    md = render_markdown(doc, {}, paths)
    assert md.index("## Claims") < md.index("## What the figures say") < md.index("## Notes")


def test_n_pre_2x_claims_are_guarded_by_random_init(paper):
    recs = []
    for seed in range(3):
        recs += [
            _rec("N_cf", 48 + 0.5 * seed, seed, k=1000, objective="jigsaw", experiment="selfsup"),
            _rec("random", 39 + 0.5 * seed, seed, objective="jigsaw", experiment="selfsup"),
        ]
    two = _rec("N_pre_2x", 32.0, 0, objective="jigsaw", experiment="selfsup")
    sel = {"control": {"k": 10}, "selfsup": {"k": 1000}}

    def s4(records):
        return [
            c["verdict"]
            for c in paper.evaluate_claims(records, paper.FULL, sel)
            if c["id"] == "S4" and c["target"] == "cifar10"
        ]

    # N_pre 2x below random init: the rule withholds the verdict, the difference still shows
    (v,) = s4([*recs, two])
    assert v.startswith("not testable: N_pre 2x not above random init") and "holds" in v
    (v,) = s4([*recs, two | {"value": 44.0}])
    assert v == "holds (n < 3)"
