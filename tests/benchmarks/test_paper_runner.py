"""The paper benchmark's runner on a tiny real suite: the run graph says what is done, a second
run makes nothing, results survive a lost run folder; the over-fitting and teacher plans; the
claim list and the renderer's kept sections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from benchmarks.paper import claims as C
from benchmarks.paper import plan as P
from benchmarks.paper import render, runner
from benchmarks.paper.scale import FULL, OVERFIT, QUICK, TEACHER

from benchmarks import paper_data


def _image_folder(root: Path, per_class: int, seed: int) -> None:
    """``root/{train,test}/<class>/*.png``: 4 classes of 32x32 RGB images whose mean colour
    depends on the class (so a probe can tell them apart)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c in range(4):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3)) + 40 * c
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny control suite on synthetic image folders: its scale, paths and data."""
    root = tmp_path_factory.mktemp("paper")
    for name, seed in (("a", 0), ("b", 1)):
        _image_folder(root / name, per_class=24, seed=seed)

    class Data:
        cifar_csv = paper_data.write_split_csv(root / "a", root / "a.csv", per_class=4)
        fmnist_csv = paper_data.write_split_csv(root / "b", root / "b.csv", per_class=4)

    scale = dataclasses.replace(
        QUICK,
        name="tiny",
        n_images=24,
        epochs=1,
        batch_size=8,
        noise=(0.5,),
        k_control=(2, 3),
        seeds=(0,),
        distill_noise=(),
        probe_limit=40,
        probe_test_limit=24,
        val_limit=40,
        val_test_limit=16,
        n_updates=3,
        max_dims=64,
        selfsup=False,
    )
    paths = P.Paths(root / "runs", root / "tiny.json", root / "tiny.md", root / "report")
    return scale, paths, Data, root


def _run(tiny, monkeypatch):
    scale, paths, data, root = tiny
    monkeypatch.setattr(runner, "prepare_data", lambda _root: data)
    return runner.run_suite(
        scale, [], root, progress=False, device="cpu", pilot=False, threads_arg=1, paths=paths
    )


def test_tiny_suite_runs_then_skips_what_the_graph_says_is_done(tiny, monkeypatch, capsys):
    scale, paths, data, _ = tiny
    assert _run(tiny, monkeypatch) == 0
    doc = json.loads(paths.results_json.read_text())
    plan = P.build_plan(scale)
    assert doc["steps_done"] == len(plan) == doc["steps_total"]
    # K picked on validation records only, among the sweep
    assert doc["selection"]["control"]["k"] in (2, 3)
    models = {(r["model"], r["k"]) for r in doc["records"] if r["split"] == "test"}
    k = doc["selection"]["control"]["k"]
    assert {("N_pre", None), ("random", None), ("N_cf", 2), ("N_cf", 3), ("N_pre_2x", None)} <= (
        models
    ), models
    assert all(r["experiment"] == "control" for r in doc["records"])
    # the pretraining cell keeps its train-accuracy curve (one value per epoch)
    assert len(doc["cells"][P.control_run(0.5, 0)]["pretrain"]["train_acc_curve"]) == 1
    # the graph's stages of the headline step: folders named by the graph, all complete
    head = next(s for s in plan if s.role == "headline")
    state = runner.step_state(head, scale, data, paths, doc["selection"])
    assert state.done and set(state.stages) == {
        "pretrain",
        f"clusters-k{k}",
        f"fit-k{k}",
        f"probe-k{k}",
        "baseline-pre2x",  # the run's baselines: one config per run, so one probe fingerprint
    }
    metas = sorted(paths.runs.rglob("meta.json"))
    before = {m: m.stat().st_mtime_ns for m in metas}
    capsys.readouterr()
    # a second run makes nothing: every step is done by the graph
    assert _run(tiny, monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count(": done") == len(plan) and "to make" not in out
    assert {m: m.stat().st_mtime_ns for m in sorted(paths.runs.rglob("meta.json"))} == before
    # a changed recipe is not done: the fingerprint differs (more N_cf epochs)
    longer = dataclasses.replace(scale, epochs=2)
    assert not runner.step_state(head, longer, data, paths, doc["selection"]).done


def test_results_survive_a_lost_run_folder(tiny, monkeypatch):
    scale, paths, data, root = tiny
    if not paths.results_json.is_file():
        assert _run(tiny, monkeypatch) == 0
    doc = json.loads(paths.results_json.read_text())
    moved = root / "elsewhere"
    paths.runs.rename(moved)
    try:
        again = runner.write_results(paths, scale, P.build_plan(scale), data, make_plots=False)
        assert again["records"] == doc["records"] and again["claims"] == doc["claims"]
        assert again["steps_done"] == doc["steps_done"]
    finally:
        moved.rename(paths.runs)


def test_overfit_plan_has_three_seeds_on_both_sides_of_c4_and_c5():
    plan = P.build_plan(OVERFIT)
    # the recipe: a small D_pre, no augmentation, N_cf with the same epochs
    assert OVERFIT.n_images < FULL.n_images and not OVERFIT.augment
    assert OVERFIT.epochs > FULL.epochs
    # the memorisation check at p = 0.75 and 0.5 first, then the K selection on validation
    assert [(s.role, s.noise) for s in plan[:3]] == [
        ("signal", 0.75),
        ("signal", 0.5),
        ("select", 0.5),
    ]
    # seed 0 at p = 0.5 and 0.75 (with both baselines) before any other seed
    first_other = min(i for i, s in enumerate(plan) if s.seed != 0)
    early = {(s.noise, s.distill, s.pre2x) for s in plan[:first_other] if s.role != "signal"}
    assert {(0.5, False, False), (0.5, True, False), (0.5, False, True)} <= early
    assert {(0.75, False, False), (0.75, True, False), (0.75, False, True)} <= early
    for p in OVERFIT.noise:
        cells = [s for s in plan if s.noise == p and s.role in ("headline", "select")]
        assert {s.seed for s in cells} == {0, 1, 2}, p
        assert {s.seed for s in plan if s.noise == p and s.pre2x} == {0, 1, 2}, p
    for p in OVERFIT.distill_noise:
        assert {s.seed for s in plan if s.noise == p and s.distill} == {0, 1, 2}, p
    assert not any(s.experiment == "selfsup" for s in plan)


def test_overfit_config_turns_augmentation_off_for_every_network(tmp_path):
    class Data:
        cifar_csv = tmp_path / "c.csv"
        fmnist_csv = tmp_path / "f.csv"

    paths = P.Paths(tmp_path / "runs", tmp_path / "r.json", None, tmp_path / "rep")
    step = next(s for s in P.build_plan(OVERFIT) if s.pre2x)
    cfg = P.make_config(step, OVERFIT, Data, paths, [10])
    assert cfg.pretrain.train.augment is False
    assert cfg.fit.train.augment is None  # N_cf inherits N_pre's recipe
    assert cfg.pretrain.train.epochs == cfg.fit.train.epochs == OVERFIT.epochs
    assert cfg.data.limit == OVERFIT.n_images and cfg.baselines.pre2x


def test_teacher_plan_and_configs(tmp_path):
    class Data:
        cifar_csv = tmp_path / "c.csv"
        fmnist_csv = tmp_path / "f.csv"

    plan = P.build_plan(TEACHER)
    paths = P.Paths(tmp_path / "runs", tmp_path / "r.json", None, tmp_path / "rep")
    assert plan[0].role == "select" and plan[0].ks == (10, 100, 1000)
    by = {}
    for s in plan:
        by.setdefault(s.objective, set()).add(s.seed)
        cfg = P.make_config(s, TEACHER, Data, paths, [10])
        assert cfg.data.image_size is None and cfg.probe.targets[0].image_size == 32
        if s.objective == "pretrained":
            assert cfg.pretrain.arch == "efficientnet_lite0" and cfg.fit.arch == "resnet_cifar"
            assert cfg.pretrain.input_size == P.TEACHER_INPUT  # N_pre alone sees 96 px
        elif s.objective == "supervised":
            assert cfg.pretrain.label_noise == 0.0  # the ceiling: CIFAR-10's true labels
        else:
            assert cfg.pretrain.arch == "resnet_cifar"
    assert by == {o: {0, 1, 2} for o in P.TEACHER_OBJECTIVES}
    seeds = [s.seed for s in plan]
    assert seeds == sorted(seeds)  # seed by seed: a suite cut short is balanced


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
        "label_noise": None,
        "objective": "supervised",
        "experiment": "control",
        "split": "test",
    }
    return base | kw


def test_every_claim_is_one_function_of_the_list():
    names = [f.__name__ for f in C.CLAIMS]
    assert len(names) == len(set(names))
    assert names[:2] == ["c1_gain_grows_with_noise", "c2_beats_n_pre"]
    # nothing recorded: every claim row says not yet run (C3, C5 rows wait for their cells)
    rows = C.evaluate_claims([], OVERFIT, {})
    assert rows and all(r["verdict"] == "not yet run" for r in rows)
    assert {r["id"] for r in rows} == {"C1", "C2", "C4", "C5"}
    # distillation is judged at both of the over-fitting regime's noise levels
    assert {r["claim"][:8] for r in rows if r["id"] == "C4"} == {"p = 0.5:", "p = 0.75"}


def test_teacher_claims_guarded_by_the_small_networks_random_init():
    recs = []
    for seed in range(3):
        t = {"experiment": "teacher"}
        recs += [
            _rec("N_cf", 60 + 0.5 * seed, seed, k=100, objective="pretrained", **t),
            _rec("N_pre", 50 + 0.5 * seed, seed, objective="rotnet", **t),
            _rec("N_pre", 40 + 0.5 * seed, seed, objective="jigsaw", **t),
            _rec("N_pre", 70 + 0.5 * seed, seed, objective="supervised", **t),
            _rec("random", 41 + 0.5 * seed, seed, objective="rotnet", **t),
        ]
    rows = C.evaluate_claims(recs, TEACHER, {"teacher": {"k": 100}})
    cifar = {
        (r["id"], r["claim"].split(" on the ")[0][-6:]): r for r in rows if r["target"] == "cifar10"
    }
    assert cifar[("T1", "rotnet")]["verdict"] == "holds"
    # Jigsaw at the random-init level: the comparison is withheld
    assert cifar[("T1", "jigsaw")]["verdict"].startswith("not testable: jigsaw not above random")
    t2 = next(r for r in rows if r["id"] == "T2" and r["target"] == "cifar10")
    assert t2["verdict"] == "does not hold (lower beyond the spread)"


def test_gain_against_memorisation_pairs_cells_by_seed():
    recs = [
        _rec("N_pre", 50.0, 0, label_noise=0.5),
        _rec("N_cf", 53.5, 0, label_noise=0.5, k=10),
        _rec("N_cf", 99.0, 0, label_noise=0.5, k=50),  # another K: not the picked one
        _rec("N_pre", 48.0, 1, label_noise=0.5),
    ]
    cells = {
        P.control_run(0.5, 0): {"pretrain": {"final_train_acc": 97.0}},
        P.control_run(0.5, 1): {"pretrain": {"final_train_acc": 95.0}},
    }
    scale = dataclasses.replace(OVERFIT, noise=(0.5,), seeds=(0, 1))
    rows = C.gain_vs_memorisation(recs, cells, scale, {"control": {"k": 10}})
    assert rows == [
        {
            "label_noise": 0.5,
            "seed": 0,
            "train_acc_noisy_labels": 97.0,
            "gain_cifar10": 3.5,
            "gain_fashion-mnist": None,
        },
        {
            "label_noise": 0.5,
            "seed": 1,
            "train_acc_noisy_labels": 95.0,
            "gain_cifar10": None,
            "gain_fashion-mnist": None,
        },
    ]


def test_results_md_keeps_sections_other_benchmarks_wrote():
    text = (
        "# ClusterFit paper benchmark\n\n## Scale and budget\n\nold\n\n## Claims\n\nold\n\n"
        "## Video\n\nclips table\n\n| a | b |\n\n## Notes\n\nold notes\n"
    )
    kept = render.foreign_sections(text)
    assert kept.startswith("## Video") and "clips table" in kept
    assert "old notes" not in kept and "## Claims" not in kept


def test_random_floor_once_per_seed_in_tables():
    recs = [_rec("random", v, s, label_noise=p) for p in (0.0, 0.5) for s, v in ((0, 40), (1, 42))]
    recs.append(_rec("N_pre", 50, 0, label_noise=0.5))
    once = render.once_per_seed(recs)
    assert [(r["model"], r["seed"]) for r in once] == [("random", 0), ("random", 1), ("N_pre", 0)]


def test_gpu_suite_is_the_issue_scale_and_its_configs_validate(tmp_path):
    from benchmarks.paper.scale import GPU

    class Data:
        cifar_csv = tmp_path / "c.csv"
        fmnist_csv = tmp_path / "f.csv"

    paths = P.Paths(tmp_path / "runs", tmp_path / "r.json", None, tmp_path / "rep")
    plan = P.build_plan(GPU)
    assert GPU.n_images == 45000 and GPU.epochs >= 60 and not GPU.augment
    assert {s.noise for s in plan} == {0.0, 0.5}
    for s in plan:
        cfg = P.make_config(s, GPU, Data, paths, [100])
        assert cfg.pretrain.arch == "resnet18" and cfg.pretrain.arch_kwargs == {}
        assert cfg.device == "auto" and cfg.data.limit == 45000
    script = (P.REPO / "benchmarks" / "paper_gpu.sh").read_text()
    assert "python -m benchmarks.paper --gpu" in script


def test_teacher_floors_of_two_architectures_stay_apart():
    """The teacher's `pretrained` run probes a random EfficientNet-Lite0, the other runs a random
    small ResNet: two floors, two rows, neither hidden behind the other."""
    recs = [
        _rec("random", v, s, objective=obj, experiment="teacher")
        for obj, vals in (("pretrained", (15, 16)), ("rotnet", (36, 38)), ("jigsaw", (36, 38)))
        for s, v in enumerate(vals)
    ]
    once = render.once_per_seed(recs)
    rows = sorted((r["model"], r["seed"], r["value"]) for r in once)
    assert rows == [
        ("random", 0, 36),
        ("random", 1, 38),
        ("random (efficientnet_lite0)", 0, 15),
        ("random (efficientnet_lite0)", 1, 16),
    ]
