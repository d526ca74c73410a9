"""The paper's findings at CPU scale on CIFAR-10: ``python benchmarks/paper.py``.

ClusterFit (Yan et al., CVPR 2020), claim by claim, on real data:

1. **Control experiment** (§3.2, Fig. 3): D_pre = D_cf = CIFAR-10 train; N_pre supervised on labels
   with uniform noise p in {0, 25, 50, 75}%; ClusterFit with K in {10, 50, 200, 1000}; N_cf with the
   same architecture and epochs; distillation at p = 50%; N_pre 2x. Probes of res4 and res5 on
   CIFAR-10 (aligned target) and Fashion-MNIST (different label space).
2. **Self-supervised** (§4.2, Fig. 4, Table 6, App. E): RotNet and Jigsaw N_pre on CIFAR-10 images
   without labels, ClusterFit with K in {100, 1000}, layer-wise probes, multi-task ClusterFit.
3. A randomly initialised network of the same architecture in every table (the floor).

Every cell is a clusterfit run folder under ``benchmarks/runs/paper/`` (``--quick``:
``benchmarks/runs/paper-quick/``) made by :func:`clusterfit.stages.run_pipeline`; a finished stage
is skipped and an interrupted one resumes, so the suite runs in resumable pieces. After each step
the records of every finished run go to ``benchmarks/results/paper.json`` (atomically), and
``benchmarks/RESULTS.md`` (claims table) and the plots of ``clusterfit report``
(``benchmarks/results/paper_report/``) are regenerated.

Hyper-parameters are chosen on validation splits carved from the *train* splits (5,000 CIFAR-10
and 5,000 Fashion-MNIST train images, ``benchmarks/paper_data.py``): K of each experiment is the K
whose N_cf has the best mean validation top-1 (res5, both validation targets) in the selection
runs (seed 0), which come first in the plan (``--pilot`` runs only those). Test splits are read
only by the final probes and never by a choice.

Usage::

    python benchmarks/paper.py --quick          # the whole path on a tiny grid (<= 15 min)
    python benchmarks/paper.py                  # the full suite (resumable; rerun to continue)
    python benchmarks/paper.py --list           # the plan, with estimated time per step
    python benchmarks/paper.py --only control   # control | selfsup | select | headline | ...
    python benchmarks/paper.py --pilot          # the validation (selection) runs only
    python benchmarks/paper.py --throughput     # measure training / inference images per second
    python benchmarks/paper.py --report-only    # rebuild JSON, RESULTS.md and plots from disk
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterfit.artifacts import META
from clusterfit.stages.graph import folder
from clusterfit.train.engine import CHECKPOINT

PRETRAIN_META = Path(folder("pretrain"), META)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# --------------------------------------------------------------------------------------------
# Scale: what the suite trains, and how long it takes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Sizes of one suite (full, quick, gpu).

    n_images: D_cf (= D_pre) size, class-balanced from CIFAR-10's 45,000 train images (seeded).
    epochs: N_pre (supervised, Jigsaw), N_cf and distillation epochs; N_pre 2x gets 2 x epochs.
    rot_epochs: RotNet epochs (each epoch shows every image at 4 rotations: 4x the images).
    throughput: training images/s assumed by ``--list`` (measured: ``--throughput``).
    """

    name: str
    n_images: int
    depth: int
    width: int
    epochs: int
    rot_epochs: int
    jig_epochs: int
    batch_size: int
    lr: float
    noise: tuple[float, ...]
    k_control: tuple[int, ...]
    k_selfsup: tuple[int, ...]
    seeds: tuple[int, ...]
    select_noise: float
    distill_noise: float
    jigsaw_permutations: int
    probe_limit: int
    probe_test_limit: int
    val_limit: int
    val_test_limit: int
    n_updates: int
    max_dims: int
    sweep_noise: tuple[float, ...]  # noise levels whose K sweep runs after the headline cells
    # "Longer N_pre" diagnostic (seed 0): N_pre trained ``long_pre_epochs`` epochs at these p,
    # then ClusterFit as in the headline cells, to see whether the size of the gain depends on
    # how far N_pre went into fitting its noisy labels.
    long_pre_noise: tuple[float, ...] = ()
    long_pre_epochs: int = 0
    # ... and at these p also at the other seeds, last in the plan, so that C2 can be judged
    # with the longer N_pre too (claim C2L, mean ± std like the headline cells)
    long_pre_seed_noise: tuple[float, ...] = ()
    train_ips: float = 220.0
    infer_ips: float = 700.0
    device: str = "cpu"

    @property
    def out_name(self) -> str:
        return "paper" if self.name == "full" else f"paper_{self.name}"


FULL = Scale(
    name="full",
    n_images=15000,
    depth=10,
    width=16,
    epochs=10,
    rot_epochs=3,
    jig_epochs=10,
    batch_size=128,
    lr=0.1,
    noise=(0.75, 0.5, 0.0, 0.25),
    k_control=(10, 50, 200, 1000),
    k_selfsup=(100, 1000),
    seeds=(0, 1, 2),
    select_noise=0.5,
    distill_noise=0.5,
    jigsaw_permutations=100,
    probe_limit=5000,
    probe_test_limit=5000,
    val_limit=2500,
    val_test_limit=2500,
    n_updates=1000,
    max_dims=4096,
    sweep_noise=(0.75,),
    long_pre_noise=(0.75, 0.5),
    long_pre_epochs=40,
    long_pre_seed_noise=(0.75,),
    train_ips=400.0,
    infer_ips=1500.0,
)

QUICK = Scale(
    name="quick",
    n_images=1500,
    depth=10,
    width=16,
    epochs=2,
    rot_epochs=1,
    jig_epochs=2,
    batch_size=128,
    lr=0.1,
    noise=(0.5, 0.0),
    k_control=(10, 50),
    k_selfsup=(10, 50),
    seeds=(0,),
    select_noise=0.5,
    distill_noise=0.5,
    jigsaw_permutations=24,
    probe_limit=600,
    probe_test_limit=600,
    val_limit=300,
    val_test_limit=300,
    n_updates=150,
    max_dims=4096,
    sweep_noise=(),
    train_ips=220.0,
    infer_ips=700.0,
)

# A larger scale for a GPU: ResNet-18-like depth, all 45,000 train images.
GPU = dataclasses.replace(
    FULL,
    name="gpu",
    n_images=45000,
    depth=18,
    width=32,
    epochs=8,
    rot_epochs=3,
    jig_epochs=8,
    batch_size=256,
    lr=0.1,
    noise=(0.75, 0.5, 0.0),
    k_control=(100, 1000),
    k_selfsup=(100, 1000),
    seeds=(0,),
    probe_limit=10000,
    probe_test_limit=10000,
    val_limit=5000,
    val_test_limit=5000,
    n_updates=1500,
    max_dims=9216,
    sweep_noise=(),
    train_ips=15000.0,
    infer_ips=50000.0,
    device="auto",
)

SCALES = {"full": FULL, "quick": QUICK, "gpu": GPU}

CIFAR = "cifar10"
FMNIST = "fashion-mnist"
CIFAR_VAL = "cifar10-val"
FMNIST_VAL = "fashion-mnist-val"
TEST_TARGETS = (CIFAR, FMNIST)
VAL_TARGETS = (CIFAR_VAL, FMNIST_VAL)
CONTROL_LAYERS = ("res4", "res5")
SELFSUP_LAYERS = ("conv1", "res2", "res3", "res4", "res5")
SELFSUP_TASKS = ("rotnet", "jigsaw")
MULTITASK = "jigsaw+rotnet"
LONG_PRE = "control-long"  # the records' experiment in the longer-N_pre diagnostic runs

# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

SELECT = -1  # placeholder K: "the K picked on validation"


@dataclass(frozen=True)
class Step:
    """One piece of the suite: a clusterfit run (folder ``run``) with some K and baselines.

    Several steps may share a run folder (a selection sweep, then a baseline, then more K): the
    pipeline skips what is complete, so N_pre and its features are made once.

    experiment: ``control`` | ``selfsup``; role: ``select`` (validation sweep), ``headline``
    (3 seeds), ``baseline`` (distill / N_pre 2x), ``multitask``, ``ksweep``.
    ks: the K values to run (``SELECT`` for the K picked on validation).
    """

    name: str
    run: str
    experiment: str
    role: str
    objective: str
    seed: int
    ks: tuple[int, ...]
    noise: float | None = None
    pre2x: bool = False
    distill: bool = False
    validation: bool = False  # probe the validation targets too (seed-0 runs)
    only: str | None = None  # run only this stage (``pretrain``: the early signal check)
    pre_epochs: int | None = None  # N_pre epochs other than the scale's (the diagnostic)

    @property
    def tag(self) -> str:
        """The records' ``experiment``: diagnostic runs are kept apart from the headline cells."""
        return LONG_PRE if self.pre_epochs else self.experiment


def control_run(p: float, seed: int, pre_epochs: int | None = None) -> str:
    long = f"-pre{pre_epochs}ep" if pre_epochs else ""
    return f"ctl-p{round(p * 100):02d}-s{seed}{long}"


def selfsup_run(task: str, seed: int) -> str:
    return f"ss-{task.replace('+', '-')}-s{seed}"


def build_plan(scale: Scale) -> list[Step]:
    """The steps in order: selection, headline cells (all seeds), baselines, then K sweeps.

    Ordered so that each claim becomes testable as early as possible: the control experiment at
    p = 75% and 50% and distillation first (the p >= 50 and distillation claims), then the
    self-supervised cells (their three claims), then p = 0 and 25% (the trend with p), N_pre 2x,
    and the remaining K sweeps last.
    """
    steps: list[Step] = []
    seeds = scale.seeds
    s0 = seeds[0]

    def ctl(role: str, p: float, seed: int, ks: tuple[int, ...], **kw: Any) -> None:
        tag = "k" + "-".join("sel" if k == SELECT else str(k) for k in ks)
        extra = "".join(f"-{k}" for k, v in kw.items() if v and k != "pre_epochs")
        if kw.get("pre_epochs"):
            extra += f"-pre{kw['pre_epochs']}ep"
        steps.append(
            Step(
                name=f"control/{role}/p{round(p * 100):02d}/s{seed}/{tag}{extra}",
                run=control_run(p, seed, kw.get("pre_epochs")),
                experiment="control",
                role=role,
                objective="supervised",
                seed=seed,
                ks=ks,
                noise=p,
                validation=seed == s0 and not kw.get("pre_epochs"),
                **kw,
            )
        )

    def ss(role: str, task: str, seed: int, ks: tuple[int, ...], **kw: Any) -> None:
        tag = "k" + "-".join("sel" if k == SELECT else str(k) for k in ks)
        extra = "".join(f"-{k}" for k, v in kw.items() if v)
        steps.append(
            Step(
                name=f"selfsup/{role}/{task}/s{seed}/{tag}{extra}",
                run=selfsup_run(task, seed),
                experiment="selfsup",
                role=role,
                objective=task,
                seed=seed,
                ks=ks,
                validation=seed == s0,
                **kw,
            )
        )

    # 0. does N_pre learn the signal of its labels at the highest noise? (train accuracy on
    #    the noisy labels against 1 - p, before anything else is spent)
    p_max = max(scale.noise)
    steps.append(
        Step(
            name=f"control/signal/p{round(p_max * 100):02d}/s{s0}/pretrain",
            run=control_run(p_max, s0),
            experiment="control",
            role="signal",
            objective="supervised",
            seed=s0,
            ks=(),
            noise=p_max,
            validation=True,
            only="pretrain",
        )
    )
    # 1. selection of K on validation (control, at select_noise; seed 0)
    ctl("select", scale.select_noise, s0, scale.k_control)
    # 2. headline control cells at p >= 50 (all seeds), then distillation at distill_noise
    first = [p for p in scale.noise if p >= 0.5]
    later = [p for p in scale.noise if p < 0.5]
    for p in first:
        for seed in seeds:
            ctl("headline", p, seed, (SELECT,))
    if scale.distill_noise in scale.noise:
        for seed in seeds:
            ctl("baseline", scale.distill_noise, seed, (SELECT,), distill=True)
    # 2b. the diagnostic: does the gain depend on how long N_pre trained? (seed 0)
    for p in scale.long_pre_noise:
        ctl("diagnose", p, s0, (SELECT,), pre_epochs=scale.long_pre_epochs)
    # 3. self-supervised: selection (seed 0, every K), headline seeds, multi-task
    for task in SELFSUP_TASKS:
        ss("select", task, s0, scale.k_selfsup)
    for task in SELFSUP_TASKS:
        for seed in seeds[1:]:
            ss("headline", task, seed, (SELECT,))
    for seed in seeds:
        ss("multitask", MULTITASK, seed, (SELECT,))
    # 4. the remaining noise levels (the trend with p)
    for p in later:
        for seed in seeds:
            ctl("headline", p, seed, (SELECT,))
    # 5. N_pre 2x (seed 0): every p, and Jigsaw
    for p in scale.noise:
        ctl("baseline", p, s0, (SELECT,), pre2x=True)
    ss("baseline", "jigsaw", s0, (SELECT,), pre2x=True)
    # 6. K sweeps (one seed) at the other noise levels
    for p in scale.sweep_noise:
        if p != scale.select_noise and p in scale.noise:
            ctl("ksweep", p, s0, scale.k_control)
    # 7. the longer-N_pre diagnostic at the other seeds (C2 judged with a better-trained N_pre)
    for p in scale.long_pre_seed_noise:
        for seed in seeds[1:]:
            ctl("diagnose", p, seed, (SELECT,), pre_epochs=scale.long_pre_epochs)
    return steps


def run_names(plan: Sequence[Step]) -> list[str]:
    return list(dict.fromkeys(s.run for s in plan))


def filter_plan(plan: Sequence[Step], only: Sequence[str]) -> list[Step]:
    """Steps whose experiment, role, objective or run name matches any word of ``only``."""
    if not only:
        return list(plan)
    words = set(only)
    return [
        s
        for s in plan
        if words & {s.experiment, s.role, s.objective, s.run, s.name}
        or any(s.name.startswith(w) for w in words)
    ]


# --------------------------------------------------------------------------------------------
# Time estimates
# --------------------------------------------------------------------------------------------


def _train_passes(scale: Scale, objective: str, epochs: int | None = None) -> float:
    """Image passes of one training (RotNet: 4 rotated copies; Jigsaw: 9 small patches ~ 0.8)."""
    if objective == "rotnet":
        return scale.n_images * (epochs or scale.rot_epochs) * 4.0
    if objective == "jigsaw":
        return scale.n_images * (epochs or scale.jig_epochs) * 0.8
    return scale.n_images * (epochs or scale.epochs)


def _probe_seconds(scale: Scale, step: Step) -> float:
    """One network probed on every target of ``step``'s run."""
    n = 2 * (scale.probe_limit + scale.probe_test_limit)
    if step.validation:
        n += 2 * (scale.val_limit + scale.val_test_limit)
    layers = len(SELFSUP_LAYERS if step.experiment == "selfsup" else CONTROL_LAYERS)
    targets = 4 if step.validation else 2
    return n / scale.infer_ips + layers * targets * 4.0 * scale.n_updates / 1000


def estimate(plan: Sequence[Step], scale: Scale, k_default: dict[str, int]) -> list[float]:
    """Seconds each step adds, given the ones before it (shared N_pre and cells counted once)."""
    have: set[tuple] = set()
    out = []
    for step in plan:
        t = 0.0
        ks = [k_default[step.experiment] if k == SELECT else k for k in step.ks]
        nets = 0
        if step.role == "multitask":
            # N_pre are the single-task checkpoints; N_cf has two heads
            for k in ks:
                if (step.run, "fit", k) not in have:
                    have.add((step.run, "fit", k))
                    t += _train_passes(scale, "supervised") / scale.train_ips
                    nets += 1
            if (step.run, "probe-pre") not in have:
                have.add((step.run, "probe-pre"))
                nets += 2
            out.append(t + nets * _probe_seconds(scale, step))
            continue
        if (step.run, "pretrain") not in have:
            have.add((step.run, "pretrain"))
            t += _train_passes(scale, step.objective, step.pre_epochs) / scale.train_ips
        if step.only == "pretrain":
            out.append(t)
            continue
        if (step.run, "probe-base") not in have:
            have.add((step.run, "probe-base"))
            t += scale.n_images / scale.infer_ips  # features
            nets += 2  # random init and N_pre
        for k in ks:
            if (step.run, "fit", k) not in have:
                have.add((step.run, "fit", k))
                t += _train_passes(scale, "supervised") / scale.train_ips
                nets += 1
        if step.pre2x and (step.run, "pre2x") not in have:
            have.add((step.run, "pre2x"))
            epochs = (scale.rot_epochs if step.objective == "rotnet" else scale.epochs) + (
                scale.epochs
            )
            t += _train_passes(scale, step.objective, epochs) / scale.train_ips
            nets += 1
        if step.distill and (step.run, "distill") not in have:
            have.add((step.run, "distill"))
            t += 1.35 * _train_passes(scale, "supervised") / scale.train_ips
            nets += 1
        out.append(t + nets * _probe_seconds(scale, step))
    return out


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclass
class Paths:
    """Where a suite reads and writes."""

    runs: Path
    results_json: Path
    results_md: Path | None
    report_dir: Path

    @classmethod
    def for_scale(cls, scale: Scale) -> Paths:
        results = HERE / "results"
        if scale.name == "full":
            return cls(
                runs=HERE / "runs" / "paper",
                results_json=results / "paper.json",
                results_md=HERE / "RESULTS.md",
                report_dir=results / "paper_report",
            )
        return cls(
            runs=HERE / "runs" / f"paper-{scale.name}",
            results_json=results / f"{scale.out_name}.json",
            results_md=results / f"{scale.out_name}.md",
            report_dir=results / f"{scale.out_name}_report",
        )


def targets(scale: Scale, data: Any, validation: bool) -> list[Any]:
    """Probe targets: CIFAR-10 and Fashion-MNIST test splits (+ their validation splits)."""
    from clusterfit.config import TargetConfig

    cifar, fmnist = str(data.cifar_csv), str(data.fmnist_csv)

    def target(name: str, source: str, test: str, limit: int, test_limit: int) -> Any:
        return TargetConfig(
            name=name,
            source=source,
            train_split="train",
            test_split=test,
            image_size=32,
            limit=limit,
            test_limit=test_limit,
        )

    out = [
        target(CIFAR, cifar, "test", scale.probe_limit, scale.probe_test_limit),
        target(FMNIST, fmnist, "test", scale.probe_limit, scale.probe_test_limit),
    ]
    if validation:
        out += [
            target(CIFAR_VAL, cifar, "val", scale.val_limit, scale.val_test_limit),
            target(FMNIST_VAL, fmnist, "val", scale.val_limit, scale.val_test_limit),
        ]
    return out


def make_config(
    step: Step,
    scale: Scale,
    data: Any,
    paths: Paths,
    ks: Sequence[int],
    progress: bool = False,
    device: str | None = None,
) -> Any:
    """The :class:`clusterfit.config.RunConfig` of one step (validated)."""
    from clusterfit.config import PretrainConfig, load_config, validate

    s = scale
    over = [
        f"name={step.run}",
        f"out_dir={paths.runs}",
        f"seed={step.seed}",
        f"device={device or s.device}",
        f"progress={str(progress).lower()}",
        f"data.source={data.cifar_csv}",
        "data.split=train",
        f"data.limit={s.n_images}",
        "pretrain.arch=resnet_cifar",
        f"pretrain.arch_kwargs={{depth: {s.depth}, width: {s.width}}}",
        f"pretrain.train.batch_size={s.batch_size}",
        f"pretrain.train.lr={s.lr}",
        f"fit.train.epochs={s.epochs}",
        "extract.layer=pool",
        "extract.normalize=true",
        "cluster.method=kmeans",
        "cluster.n_iter=25",
        f"probe.n_updates={s.n_updates}",
        f"probe.max_dims={s.max_dims}",
        # the random-init floor is probed once per seed, in the single-task headline runs
        "probe.random_baseline=" + ("false" if step.role in ("multitask", "diagnose") else "true"),
        f"baselines.pre2x={str(step.pre2x).lower()}",
        f"baselines.distill={str(step.distill).lower()}",
    ]
    if step.experiment == "control":
        over += [
            "pretrain.objective=supervised",
            f"pretrain.label_noise={step.noise}",
            f"pretrain.train.epochs={step.pre_epochs or s.epochs}",
        ]
    elif step.objective == "rotnet":
        over += ["pretrain.objective=rotnet", f"pretrain.train.epochs={s.rot_epochs}"]
    elif step.objective == "jigsaw":
        over += [
            "pretrain.objective=jigsaw",
            f"pretrain.jigsaw_permutations={s.jigsaw_permutations}",
            f"pretrain.train.epochs={s.jig_epochs}",
        ]
    cfg = load_config(None, over)
    cfg.probe.layers = list(CONTROL_LAYERS if step.experiment == "control" else SELFSUP_LAYERS)
    cfg.probe.targets = targets(s, data, step.validation)
    cfg.sweep_k = list(ks)
    if step.role == "multitask":
        # Multi-task ClusterFit (App. E): the Jigsaw and RotNet N_pre of the same seed, as
        # checkpoints (trained once, in their own runs); one N_cf with a head per clustering.
        def ckpt(task: str) -> PretrainConfig:
            path = paths.runs / selfsup_run(task, step.seed) / folder("pretrain") / CHECKPOINT
            return dataclasses.replace(cfg.pretrain, objective="checkpoint", checkpoint=str(path))

        cfg.pretrain = ckpt("jigsaw")
        cfg.multitask = [ckpt("rotnet")]
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# Results: collect the records of finished runs
# --------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def _stage_summary(stage_dir: Path) -> dict[str, Any] | None:
    meta = stage_dir / "meta.json"
    if not meta.is_file():
        return None
    m = _read(meta)
    s = dict(m.get("summary", {}))
    s.pop("table", None)
    log = stage_dir / "log.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        ips = [r["images_per_s"] for r in rows if "images_per_s" in r]
        if ips:
            s["images_per_s_median"] = sorted(ips)[len(ips) // 2]
    return s


def collect_run(run_dir: Path, step_info: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    """The finished probe records of one run folder (tagged) and its stages' summaries."""
    records: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for probe_dir in sorted(run_dir.glob("probe*")):
        if not (probe_dir / "meta.json").is_file() or not probe_dir.is_dir():
            continue
        if probe_dir.name == "probe_cells":
            continue
        for r in _read(probe_dir / "results.json")["records"]:
            key = (r["model"], r["layer"], r["target"], r["protocol"], r["metric"], r["k"])
            if key in seen:
                continue
            seen.add(key)
            rec = {k: v for k, v in r.items() if k != "extra"}
            rec["run"] = run_dir.name
            rec["experiment"] = step_info["experiment"]
            if step_info["role"] == "multitask":
                if r["model"] != "N_cf":
                    continue  # N_pre are the single-task runs' networks, reported there
                rec["objective"] = MULTITASK
            rec["split"] = "val" if r["target"] in VAL_TARGETS else "test"
            records.append(rec)
    stages = {}
    for d in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if d.is_dir() and (d.name.startswith(("pretrain", "fit", "baseline", "clusters"))):
            s = _stage_summary(d)
            if s is not None:
                stages[d.name] = s
    return records, stages


def collect(paths: Paths, plan: Sequence[Step]) -> tuple[list[dict], dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cells: dict[str, Any] = {}
    info = {}
    for step in plan:
        info.setdefault(step.run, {"experiment": step.tag, "role": step.role})
        if step.role == "multitask":
            info[step.run]["role"] = "multitask"
    for run in run_names(plan):
        run_dir = paths.runs / run
        if not run_dir.is_dir():
            continue
        recs, stages = collect_run(run_dir, info[run])
        records += recs
        if stages:
            cells[run] = stages
    return records, cells


# --------------------------------------------------------------------------------------------
# Statistics and claims
# --------------------------------------------------------------------------------------------


@dataclass
class Stat:
    """Values of one quantity over seeds: ``{seed: value}``."""

    by_seed: dict[int, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        v = list(self.by_seed.values())
        return sum(v) / len(v) if v else math.nan

    @property
    def std(self) -> float:
        v = list(self.by_seed.values())
        if len(v) < 2:
            return 0.0
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def fmt(self) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stat(records: Iterable[dict[str, Any]], **where: Any) -> Stat:
    """The records matching ``where`` (linear top-1 unless said otherwise), by seed."""
    where = {"protocol": "linear", "metric": "top1", **where}
    out = Stat()
    for r in records:
        if all(r.get(k) == v for k, v in where.items()):
            out.by_seed[int(r["seed"])] = float(r["value"])
    return out


def paired(a: Stat, b: Stat) -> Stat:
    """``a - b`` seed by seed (the seeds both have)."""
    return Stat({s: a.by_seed[s] - b.by_seed[s] for s in a.by_seed if s in b.by_seed})


MIN_SEEDS = 3


def compare(a: Stat, b: Stat) -> tuple[str, float, float]:
    """Verdict on "a > b": (verdict, difference of means, spread = std_a + std_b).

    ``holds`` only when the difference exceeds the spread; fewer than 3 seeds on either side
    adds "(n < 3)" to the verdict, since the spread is then not measured.
    """
    if a.n == 0 or b.n == 0:
        return "not yet run", math.nan, math.nan
    diff, spread = a.mean - b.mean, a.std + b.std
    if diff > spread:
        verdict = "holds"
    elif diff < -spread:
        verdict = "does not hold (reversed beyond the spread)"
    else:
        verdict = "does not hold (difference within the spread)"
    if min(a.n, b.n) < MIN_SEEDS:
        verdict += f" (n < {MIN_SEEDS})"
    return verdict, diff, spread


def at_least(a: Stat, b: Stat) -> tuple[str, float, float]:
    """Verdict on "a >= b" (not worse): holds when a's mean is not below b's."""
    if a.n == 0 or b.n == 0:
        return "not yet run", math.nan, math.nan
    diff, spread = a.mean - b.mean, a.std + b.std
    if diff > spread:
        verdict = "holds (better beyond the spread)"
    elif diff >= 0:
        verdict = "holds (not worse; the gain is within the spread)"
    elif diff >= -spread:
        verdict = "does not hold (lower, within the spread)"
    else:
        verdict = "does not hold (lower beyond the spread)"
    if min(a.n, b.n) < MIN_SEEDS:
        verdict += f" (n < {MIN_SEEDS})"
    return verdict, diff, spread


def above_random(x: Stat, rnd: Stat) -> bool:
    """``x`` is clearly above the random-init network: by more than both spreads."""
    if x.n == 0 or rnd.n == 0:
        return True  # nothing to say yet
    return x.mean - rnd.mean > x.std + rnd.std


def _guard(verdict: str, nets: dict[str, Stat], rnd: Stat) -> str:
    low = [name for name, s in nets.items() if not above_random(s, rnd)]
    if low and verdict.startswith("holds"):
        # the rule wins, but the reader still sees what the difference alone said
        return f"not testable: {', '.join(low)} not above random init (the difference: {verdict})"
    if low:
        return verdict + "; " + ", ".join(low) + " not above random init"
    return verdict


def _judged(a: Stat, b: Stat, names: tuple[str, str], rnd: Stat) -> str:
    """``compare(a, b)``'s verdict under the random-init rule; ``names``: (a's, b's)."""
    verdict, _, _ = compare(a, b)
    if verdict == "not yet run":
        return verdict
    return _guard(verdict, {names[1]: b, names[0]: a}, rnd)


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


def evaluate_claims(
    records: list[dict[str, Any]], scale: Scale, selection: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every claim of the issue on the test splits, one row per (claim, target, layer)."""
    test = [r for r in records if r.get("split", "test") == "test"]
    ctl = [r for r in test if r.get("experiment") == "control"]
    ss = [r for r in test if r.get("experiment") == "selfsup"]
    k_ctl = selection.get("control", {}).get("k")
    k_ss = selection.get("selfsup", {}).get("k")
    out: list[dict[str, Any]] = []

    def q(recs: list[dict], **w: Any) -> Stat:
        return stat(recs, **w)

    for target in TEST_TARGETS:
        for layer in CONTROL_LAYERS:
            rnd = q(ctl, model="random", target=target, layer=layer)
            # C1: the gain of N_cf over N_pre grows with p
            gains, nets = {}, {}
            for p in sorted(scale.noise):
                pre = q(ctl, model="N_pre", label_noise=p, target=target, layer=layer)
                cf = q(ctl, model="N_cf", label_noise=p, k=k_ctl, target=target, layer=layer)
                gains[p] = paired(cf, pre)
                nets[f"N_pre(p={p:g})"] = pre
                nets[f"N_cf(p={p:g})"] = cf
            ps = sorted(gains)
            figure = "; ".join(f"p={p:g}: {gains[p].fmt()}" for p in ps)
            if any(gains[p].n == 0 for p in ps) or k_ctl is None:
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
                verdict = _guard(verdict, nets, rnd)
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
    # C2: for p >= 50 N_cf beats N_pre on the aligned target
    for p in [p for p in sorted(scale.noise) if p >= 0.5]:
        for layer in CONTROL_LAYERS:
            w = {"label_noise": p, "target": CIFAR, "layer": layer}
            pre, cf = q(ctl, model="N_pre", **w), q(ctl, model="N_cf", k=k_ctl, **w)
            rnd = q(ctl, model="random", target=CIFAR, layer=layer)
            verdict = _judged(cf, pre, ("N_cf", "N_pre"), rnd)
            out.append(
                _claim(
                    "C2",
                    "control",
                    f"p = {p:g}: N_cf beats N_pre on the aligned target (Fig. 3)",
                    CIFAR,
                    layer,
                    f"N_cf {cf.fmt()} vs N_pre {pre.fmt()}; random {rnd.fmt()}",
                    verdict,
                )
            )
    # C2L: the same comparison with N_pre trained long_pre_epochs (the diagnostic at 3 seeds)
    lng = [r for r in test if r.get("experiment") == LONG_PRE]
    for p in scale.long_pre_seed_noise:
        for target in TEST_TARGETS:
            for layer in CONTROL_LAYERS:
                w = {"label_noise": p, "target": target, "layer": layer}
                pre, cf = q(lng, model="N_pre", **w), q(lng, model="N_cf", k=k_ctl, **w)
                rnd = q(ctl, model="random", target=target, layer=layer)
                verdict = _judged(cf, pre, ("N_cf", "N_pre"), rnd)
                out.append(
                    _claim(
                        "C2L",
                        LONG_PRE,
                        f"p = {p:g}, N_pre trained {scale.long_pre_epochs} epochs: N_cf beats "
                        "N_pre (the diagnostic)",
                        target,
                        layer,
                        f"N_cf {cf.fmt()} vs N_pre {pre.fmt()}; random {rnd.fmt()}",
                        verdict,
                    )
                )
    # C3: on the non-aligned target larger K helps (one seed per K; spread: N_cf seeds at K*)
    for p in sorted(scale.noise):
        for layer in CONTROL_LAYERS:
            w = {"label_noise": p, "target": FMNIST, "layer": layer, "seed": scale.seeds[0]}
            by_k = {k: q(ctl, model="N_cf", k=k, **w) for k in scale.k_control}
            by_k = {k: s for k, s in by_k.items() if s.n}
            if len(by_k) < len(scale.k_control):
                continue
            seeds_at_sel = q(ctl, model="N_cf", k=k_ctl, label_noise=p, target=FMNIST, layer=layer)
            kmin, kmax = min(by_k), max(by_k)
            spread = 2 * seeds_at_sel.std
            diff = by_k[kmax].mean - by_k[kmin].mean
            if seeds_at_sel.n < 2:
                verdict = "not yet testable (needs the seeds at K* for the spread)"
            elif diff > spread:
                verdict = "holds"
            else:
                verdict = (
                    "does not hold (difference within the spread)"
                    if diff >= -spread
                    else ("does not hold (reversed beyond the spread)")
                )
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
    # C4: distillation is below ClusterFit
    p = scale.distill_noise
    for target in TEST_TARGETS:
        for layer in CONTROL_LAYERS:
            w = {"label_noise": p, "target": target, "layer": layer}
            dis, cf = q(ctl, model="distill", **w), q(ctl, model="N_cf", k=k_ctl, **w)
            rnd = q(ctl, model="random", target=target, layer=layer)
            verdict = _judged(cf, dis, ("N_cf", "distill"), rnd)
            out.append(
                _claim(
                    "C4",
                    "control",
                    f"p = {p:g}: distillation is below ClusterFit (App. A)",
                    target,
                    layer,
                    f"N_cf {cf.fmt()} vs distill {dis.fmt()}",
                    verdict,
                )
            )
    # C5: N_cf against N_pre 2x (same total epochs)
    for p in sorted(scale.noise):
        for target in TEST_TARGETS:
            w = {"label_noise": p, "target": target, "layer": "res5"}
            two, cf = q(ctl, model="N_pre_2x", **w), q(ctl, model="N_cf", k=k_ctl, **w)
            if two.n == 0:
                continue
            rnd = q(ctl, model="random", target=target, layer="res5")
            verdict = _judged(cf, two, ("N_cf", "N_pre 2x"), rnd)
            out.append(
                _claim(
                    "C5",
                    "control",
                    f"p = {p:g}: N_cf beats N_pre 2x (same total epochs; §3.2)",
                    target,
                    "res5",
                    f"N_cf {cf.fmt()} vs N_pre 2x {two.fmt()}",
                    verdict,
                )
            )
    # Self-supervised claims
    for task in SELFSUP_TASKS:
        for target in TEST_TARGETS:
            w = {"objective": task, "target": target}
            rnd5 = q(ss, model="random", layer="res5", **w)
            pre5 = q(ss, model="N_pre", layer="res5", **w)
            cf5 = q(ss, model="N_cf", layer="res5", k=k_ss, **w)
            verdict = _judged(cf5, pre5, ("N_cf", "N_pre"), rnd5)
            out.append(
                _claim(
                    "S1",
                    "selfsup",
                    f"{task}: N_cf's res5 beats N_pre's res5 (Fig. 4, Table 6)",
                    target,
                    "res5",
                    f"N_cf {cf5.fmt()} vs N_pre {pre5.fmt()}; random {rnd5.fmt()}",
                    verdict,
                )
            )
            pre4 = q(ss, model="N_pre", layer="res4", **w)
            cf4 = q(ss, model="N_cf", layer="res4", k=k_ss, **w)
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
    for target in TEST_TARGETS:
        w = {"target": target, "layer": "res5", "k": k_ss}
        singles = {t: q(ss, model="N_cf", objective=t, **w) for t in SELFSUP_TASKS}
        mt = q(ss, model="N_cf", objective=MULTITASK, **w)
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
        two = q(ss, model="N_pre_2x", objective="jigsaw", target=target, layer="res5")
        if two.n:
            cf = singles["jigsaw"]
            rnd = q(ss, model="random", objective="jigsaw", target=target, layer="res5")
            verdict = _judged(cf, two, ("N_cf", "N_pre 2x"), rnd)
            out.append(
                _claim(
                    "S4",
                    "selfsup",
                    "jigsaw: N_cf beats N_pre 2x (same total epochs)",
                    target,
                    "res5",
                    f"N_cf {cf.fmt()} vs N_pre 2x {two.fmt()}",
                    verdict,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Selection on validation
# --------------------------------------------------------------------------------------------


def select_k(
    records: list[dict[str, Any]],
    experiment: str,
    ks: Sequence[int],
    seed: int,
    noise: float | None = None,
) -> dict[str, Any] | None:
    """The K whose N_cf has the best mean validation top-1 (res5, both validation targets).

    Reads only ``split == "val"`` records of the selection runs: ``seed``, and for the control
    experiment the selection's label noise ``noise`` (other seed-0 runs probe validation too, at
    one K, and must not move the choice); None until every K has both validation numbers.
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
        and (noise is None or r.get("label_noise") == noise)
    ]
    scores: dict[int, list[float]] = {}
    for r in val:
        scores.setdefault(int(r["k"]), []).append(float(r["value"]))
    need = 2 * (1 if experiment == "control" else len(SELFSUP_TASKS))
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


def signal_check(
    records: list[dict[str, Any]], cells: dict[str, Any], scale: Scale
) -> list[dict[str, Any]]:
    """Did N_pre learn the signal in its labels? Train accuracy on its (noisy) labels against
    the clean-predictor level 1 - p (noise goes to the other 9 classes uniformly), and its
    validation probe against random init (seed-0 runs)."""
    out = []
    for p in sorted(scale.noise):
        run = control_run(p, scale.seeds[0])
        pre = cells.get(run, {}).get("pretrain")
        row: dict[str, Any] = {"label_noise": p, "run": run}
        if pre:
            row["train_acc_noisy_labels"] = pre.get("final_train_acc")
            row["clean_predictor_level"] = round(100 * (1 - p), 2)
            row["images_per_s"] = pre.get("images_per_s_median")
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


# --------------------------------------------------------------------------------------------
# Writing the results
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
- N_pre 2x and the K sweeps use one seed (seed 0); their verdicts carry "(n < 3)". The K-sweep
  claim (C3) takes as its spread twice the std of the N_cf seeds at the picked K.
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
"""


def write_results(
    paths: Paths,
    scale: Scale,
    plan: Sequence[Step],
    extra: dict[str, Any],
    make_plots: bool = True,
) -> dict[str, Any]:
    """Collect every finished run, write the JSON, RESULTS.md and the plots; return the doc."""
    records, cells = collect(paths, plan)
    selection = {}
    for exp, ks, noise in (
        ("control", scale.k_control, scale.select_noise),
        ("selfsup", scale.k_selfsup, None),
    ):
        sel = select_k(records, exp, ks, scale.seeds[0], noise)
        if sel is not None:
            selection[exp] = sel
    claims = evaluate_claims(records, scale, selection)
    done = [s.name for s in plan if step_done(s, paths, selection)]
    old = _read(paths.results_json) if paths.results_json.is_file() else {}
    doc = {
        "suite": scale.name,
        "scale": dataclasses.asdict(scale),
        "command": "python benchmarks/paper.py"
        + ("" if scale.name == "full" else f" --{scale.name}"),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps_done": len(done),
        "steps_total": len(plan),
        "steps": {s.name: (s.name in done) for s in plan},
        "throughput": old.get("throughput"),
        **{k: v for k, v in old.items() if k in ("pilot_notes",)},
        **extra,
        "selection": selection,
        "signal_check": signal_check(records, cells, scale),
        "long_pre_check": long_pre_check(records, cells, scale, selection),
        "claims": claims,
        "cells": cells,
        "records": records,
    }
    _atomic_json(paths.results_json, doc)
    plots: dict[str, list[str]] = {}
    if make_plots and records:
        plots = write_plots(records, paths, selection)
    if paths.results_md is not None:
        paths.results_md.write_text(render_markdown(doc, plots, paths))
    return doc


def write_plots(
    records: list[dict[str, Any]], paths: Paths, selection: dict[str, Any]
) -> dict[str, list[str]]:
    """``clusterfit report``'s tables and figures, per experiment, on the test-split records."""
    from clusterfit.report import write_report

    out: dict[str, list[str]] = {}
    for exp in ("control", "selfsup"):
        recs = [
            r
            for r in records
            if r["experiment"] == exp
            and r["split"] == "test"
            and r["protocol"] == "linear"
            and r["metric"] == "top1"
        ]
        if not recs:
            continue
        folder = paths.report_dir / exp
        res = write_report(recs, folder, title=f"ClusterFit paper benchmark: {exp}")
        pngs = [str(Path(p)) for p in res.get("plots", res.get("figures", []))]
        if not pngs:
            pngs = [str(p) for p in sorted(folder.glob("*.png"))]
        for png in pngs:
            shrink_png(Path(png))
        out[exp] = pngs
    return out


def shrink_png(path: Path, colors: int = 64) -> None:
    """Rewrite a matplotlib PNG with a 64-colour palette (about 3x smaller, same look)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    tmp = path.with_name(f".{path.name}.tmp.png")
    small.save(tmp, optimize=True)
    os.replace(tmp, path)


def step_done(step: Step, paths: Paths, selection: dict[str, Any]) -> bool:
    run = paths.runs / step.run
    if step.only == "pretrain":
        return (run / folder("pretrain") / META).is_file()
    k_sel = selection.get(step.experiment, {}).get("k")
    ks = [k_sel if k == SELECT else k for k in step.ks]
    if any(k is None for k in ks):
        return False
    if not all((run / folder("probe", variant=f"k{k}") / META).is_file() for k in ks):
        return False
    if step.pre2x and not (run / folder("baselines", key="pre2x") / META).is_file():
        return False
    return not (step.distill and not (run / folder("baselines", key="distill") / META).is_file())


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(doc: dict[str, Any], plots: dict[str, list[str]], paths: Paths) -> str:
    """RESULTS.md: budget, selection, claims table, N_pre signal check, tables, plots."""
    from clusterfit.report import markdown_table

    s = doc["scale"]
    lines = [
        "# ClusterFit paper benchmark at CPU scale (CIFAR-10)",
        "",
        f"Generated by `{doc['command']}` ({doc['updated']}); {doc['steps_done']} of "
        f"{doc['steps_total']} steps done. Every cell and seed: "
        f"`{os.path.relpath(paths.results_json, REPO)}`. Rerun the command to resume; finished "
        "stages are skipped.",
        "",
        "## Scale and budget",
        "",
        f"- D_pre = D_cf: {s['n_images']} CIFAR-10 train images (class-balanced, a different "
        f"subset per seed) of the 45,000 left after carving 5,000 for validation; 32x32.",
        f"- Network: `resnet_cifar` depth {s['depth']}, width {s['width']} (stages "
        f"{s['width']}/{2 * s['width']}/{4 * s['width']}/{8 * s['width']} channels), for N_pre, "
        "N_cf, N_pre 2x, distillation and the random-init floor.",
        f"- Training: SGD lr {s['lr']}, batch {s['batch_size']}, cosine, weight decay 5e-4, "
        f"crop + flip; supervised N_pre and every N_cf {s['epochs']} epochs, RotNet "
        f"{s['rot_epochs']} epochs (x4 rotations), Jigsaw {s['jig_epochs']} epochs "
        f"({s['jigsaw_permutations']} permutations); N_pre 2x: N_pre's + N_cf's epochs.",
        f"- Seeds {list(s['seeds'])} for every headline comparison; K sweeps and N_pre 2x use "
        "seed 0.",
        f"- Probes: linear on frozen, pooled features (res4, res5; self-supervised conv1..res5), "
        f"{s['probe_limit']} train / {s['probe_test_limit']} test images per target "
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
    lines += ["", "## Choices made on validation (never on a test split)", ""]
    if doc["selection"]:
        for exp, sel in doc["selection"].items():
            lines.append(
                f"- {exp}: K = **{sel['k']}** ({sel['criterion']}; validation top-1 by K: "
                + ", ".join(f"K={k}: {v:.2f}" for k, v in sel["val_top1_by_k"].items())
                + ")"
            )
    else:
        lines.append("- not yet: the selection runs have not finished")
    sc = [r for r in doc["signal_check"] if len(r) > 2]
    if sc:
        lines += [
            "",
            "Did N_pre learn the signal in its labels? (seed 0; train accuracy on its noisy "
            "labels, with augmentation, last epoch; a clean-label predictor scores 1 − p)",
            "",
        ]
        rows = [
            [
                f"{r['label_noise']:g}",
                _f(r.get("train_acc_noisy_labels")),
                _f(r.get("clean_predictor_level")),
                _f(r.get("val_res5_N_pre")),
                _f(r.get("val_res5_random")),
            ]
            for r in sc
        ]
        lines.append(
            _md_table(
                [
                    "p",
                    "N_pre train acc (%)",
                    "clean predictor (%)",
                    "N_pre res5, CIFAR-10 val (%)",
                    "random init res5, val (%)",
                ],
                rows,
            )
        )
    lines += [
        "",
        "## Claims",
        "",
        "Linear-probe top-1 (%) on the test splits, mean ± std over seeds. A claim holds only when "
        "the difference of means exceeds the spread (std + std) and the networks compared are "
        "clearly above the random-init network.",
        "",
    ]
    rows = [
        [c["id"], c["claim"], c["target"], c["layer"], c["figure"], c["verdict"]]
        for c in doc["claims"]
    ]
    lines.append(
        _md_table(["#", "paper's claim", "target", "layer", "our figure", "verdict"], rows)
    )
    # the written reading of the claims (figures quoted from this file's tables), when one exists
    reading = paths.results_json.with_name(paths.results_json.stem + "_reading.md")
    if reading.is_file():
        lines += ["", reading.read_text().strip()]
    lp = doc.get("long_pre_check") or []
    if lp:
        lines += [
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
            row = [f"{r['label_noise']:g}", str(r["pre_epochs"]), _f(r["train_acc_noisy_labels"])]
            for t in TEST_TARGETS:
                a, b = r.get(f"{t}_N_pre"), r.get(f"{t}_N_cf")
                gain = None if a is None or b is None else b - a
                row += [_f(a), _f(b), _f(gain)]
            body.append(row)
        lines.append(_md_table(header, body))
    for exp in ("control", "selfsup"):
        recs = [
            r
            for r in doc["records"]
            if r["experiment"] == exp
            and r["split"] == "test"
            and r["protocol"] == "linear"
            and r["metric"] == "top1"
        ]
        if not recs:
            continue
        lines += [
            "",
            f"## {exp}: linear-probe top-1 (%) on the test splits (mean ± std over seeds)",
            "",
            markdown_table(recs),
        ]
        for png in plots.get(exp, []):
            rel = os.path.relpath(png, paths.results_md.parent if paths.results_md else REPO)
            lines.append(f"![{Path(png).stem}]({rel})")
        lines.append("")
    lines += ["", "## Notes", "", NOTES]
    if doc.get("pilot_notes"):
        lines += [doc["pilot_notes"], ""]
    return "\n".join(lines)


def _f(v: Any) -> str:
    return "–" if v is None else f"{float(v):.2f}"


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def measure_throughput(seconds: float = 6.0) -> dict[str, Any]:
    """Training (forward + backward + SGD) and inference images/s of the candidate networks."""
    import torch
    import torch.nn.functional as F

    from clusterfit.models import create_model

    rows = []
    for depth, width in ((10, 16), (10, 32), (18, 16)):
        torch.manual_seed(0)
        net = create_model("resnet_cifar", [10], in_chans=3, depth=depth, width=width)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
        net.train()

        def step() -> None:
            loss = F.cross_entropy(net(x)[0], y)  # noqa: B023
            opt.zero_grad()  # noqa: B023
            loss.backward()
            opt.step()  # noqa: B023

        step()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            step()
            n += x.shape[0]
        train = n / (time.perf_counter() - t)
        net.eval()
        xb = torch.rand(256, 3, 32, 32)
        with torch.no_grad():
            net.forward_features(xb)
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < seconds / 2:
                net.forward_features(xb)
                n += xb.shape[0]
        infer = n / (time.perf_counter() - t)
        rows.append({"depth": depth, "width": width, "train_ips": train, "infer_ips": infer})
        print(f"depth {depth} width {width}: train {train:.0f} img/s, inference {infer:.0f} img/s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "rows": rows,
        "threads": torch.get_num_threads(),
        "load_average_1min": load,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def take_lock(runs: Path) -> bool:
    """One suite process per run folder: ``<runs>/.lock`` holds the pid of the one running."""
    runs.mkdir(parents=True, exist_ok=True)
    lock = runs / ".lock"
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            print(f"{runs} is in use by process {pid}; not starting a second suite")
            return False
        else:
            print(f"{runs} is in use by process {pid}; not starting a second suite")
            return False
    lock.write_text(f"{os.getpid()}\n")
    return True


def choose_threads(requested: int | None) -> int:
    """Torch threads for the next step: ``requested``, else 1 on a busy machine, else all cores.

    On a 2-core machine shared with other jobs, two OpenMP threads spend most of their time
    waiting for each other at every operation, and one thread trains faster; on a quiet machine
    two threads are faster. The 1-minute load average, less this process's own (the threads its
    previous stage ran), decides.
    """
    if requested:
        return requested
    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    others = load - torch.get_num_threads()
    return 1 if others > 0.5 * cores else cores


def resolve_ks(step: Step, selection: dict[str, Any]) -> list[int] | None:
    k_sel = selection.get(step.experiment, {}).get("k")
    if SELECT in step.ks and k_sel is None:
        return None
    return [k_sel if k == SELECT else k for k in step.ks]


def run_suite(
    scale: Scale,
    only: Sequence[str],
    data_root: Path,
    progress: bool,
    device: str | None,
    pilot: bool,
    threads_arg: int | None = None,
) -> int:
    import torch

    from clusterfit.stages import STAGES, run_pipeline

    sys.path.insert(0, str(HERE))
    import paper_data

    data = paper_data.prepare(data_root)
    paths = Paths.for_scale(scale)
    if not take_lock(paths.runs):
        return 2
    full_plan = build_plan(scale)
    plan = [s for s in full_plan if s.role == "select"] if pilot else full_plan
    plan = filter_plan(plan, only)
    extra = {"budget": budget_line(scale, full_plan)}
    failures = 0
    print(f"{len(plan)} steps; runs under {paths.runs}; torch threads {torch.get_num_threads()}")
    for i, step in enumerate(plan):
        doc = _read(paths.results_json) if paths.results_json.is_file() else {}
        selection = doc.get("selection", {})
        if step_done(step, paths, selection):
            print(f"[{i + 1}/{len(plan)}] {step.name}: done")
            continue
        ks = resolve_ks(step, selection)
        if ks is None:
            print(f"[{i + 1}/{len(plan)}] {step.name}: waiting for the K picked on validation")
            continue
        if step.role == "multitask":
            missing = [
                t
                for t in SELFSUP_TASKS
                if not (
                    paths.runs / selfsup_run(t, step.seed) / folder("pretrain") / META
                ).is_file()
            ]
            if missing:
                print(f"[{i + 1}/{len(plan)}] {step.name}: needs the {missing} N_pre first")
                continue
        print(f"[{i + 1}/{len(plan)}] {step.name}: run {step.run}, K {ks}", flush=True)
        started = time.perf_counter()
        try:
            cfg = make_config(step, scale, data, paths, ks, progress=progress, device=device)
            # stage by stage, so that the number of threads follows the machine's load
            for stage in [step.only] if step.only else list(STAGES):
                threads = choose_threads(threads_arg)
                torch.set_num_threads(threads)
                print(f"  {stage}: {threads} thread(s)", flush=True)
                run_pipeline(cfg, only=stage)
        except KeyboardInterrupt:
            raise
        except Exception:
            failures += 1
            traceback.print_exc()
            print(f"[{i + 1}/{len(plan)}] {step.name}: FAILED, going on", flush=True)
            continue
        print(f"[{i + 1}/{len(plan)}] {step.name}: {time.perf_counter() - started:.0f} s")
        write_results(paths, scale, full_plan, extra)
    write_results(paths, scale, full_plan, extra)
    return 1 if failures else 0


def budget_line(scale: Scale, plan: Sequence[Step]) -> str:
    k_default = {
        "control": scale.k_control[len(scale.k_control) // 2],
        "selfsup": scale.k_selfsup[0],
    }
    total = sum(estimate(plan, scale, k_default))
    return (
        f"about {total / 3600:.1f} h of this machine for the {len(plan)} steps at "
        f"{scale.train_ips:.0f} training / {scale.infer_ips:.0f} inference images/s (a quiet "
        "2-core machine; more when it is shared)."
    )


def print_plan(scale: Scale, only: Sequence[str]) -> None:
    plan = build_plan(scale)
    paths = Paths.for_scale(scale)
    doc = _read(paths.results_json) if paths.results_json.is_file() else {}
    selection = doc.get("selection", {})
    k_default = {
        exp: selection.get(exp, {}).get("k", ks[len(ks) // 2] if exp == "control" else ks[0])
        for exp, ks in (("control", scale.k_control), ("selfsup", scale.k_selfsup))
    }
    times = estimate(plan, scale, k_default)
    keep = set(s.name for s in filter_plan(plan, only))
    total = 0.0
    print(f"{scale.name} suite: {len(plan)} steps, runs under {paths.runs}")
    print(f"K picked on validation: {k_default} ({'picked' if selection else 'assumed'})")
    for step, t in zip(plan, times, strict=True):
        if step.name not in keep:
            continue
        total += t
        state = "done" if step_done(step, paths, selection) else "todo"
        print(f"  {state}  {t / 60:6.1f} min  {step.name}")
    print(f"total {total / 3600:.2f} h ({budget_line(scale, plan)})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny grid through the whole path")
    ap.add_argument("--scale", choices=sorted(SCALES), default=None, help="full | quick | gpu")
    ap.add_argument("--list", action="store_true", help="print the plan with time estimates")
    ap.add_argument("--only", nargs="*", default=[], help="experiment/role/run words to select")
    ap.add_argument("--pilot", action="store_true", help="only the validation (selection) runs")
    ap.add_argument("--throughput", action="store_true", help="measure images/s, record it")
    ap.add_argument("--report-only", action="store_true", help="rebuild JSON/markdown/plots")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--device", default=None, help="cpu | cuda | auto (default: the scale's)")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: by load)")
    args = ap.parse_args(argv)
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    paths = Paths.for_scale(scale)
    if args.list:
        print_plan(scale, args.only)
        return 0
    if args.throughput:
        tp = measure_throughput()
        doc = _read(paths.results_json) if paths.results_json.is_file() else {}
        doc["throughput"] = tp
        _atomic_json(paths.results_json, doc)
        return 0
    if args.report_only:
        plan = build_plan(scale)
        write_results(paths, scale, plan, {"budget": budget_line(scale, plan)})
        return 0
    return run_suite(
        scale, args.only, args.data_root, args.progress, args.device, args.pilot, args.threads
    )


if __name__ == "__main__":
    sys.exit(main())
