"""The plan: the steps of a suite in order, their time estimates and their run configs.

A :class:`Step` is one clusterfit run folder with some K and baselines (Yan et al., CVPR 2020:
the control experiment of §3.2, the self-supervised one of §4.2, the baselines of App. A). Steps
are ordered so that each claim becomes testable as early as possible; the runner
(:mod:`benchmarks.paper.runner`) asks the run graph which of their stages are complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.paper.scale import (
    CIFAR,
    CIFAR_VAL,
    CONTROL_LAYERS,
    FMNIST,
    FMNIST_VAL,
    LONG_PRE,
    MULTITASK,
    SELFSUP_LAYERS,
    SELFSUP_TASKS,
    Scale,
)

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent

SELECT = -1  # placeholder K: "the K picked on validation"
TEACHER_ARCH = "efficientnet_lite0"
# The side EfficientNet-Lite0 sees in the teacher suite (``pretrain.input_size``: D_cf and the
# probe targets upsampled from 32 px; at 32 px its last map is 1 x 1); the data, N_cf and the
# other networks stay at 32 px.
TEACHER_INPUT = 96


@dataclass(frozen=True)
class Step:
    """One piece of the suite: a clusterfit run (folder ``run``) with some K and baselines.

    Several steps may share a run folder (a selection sweep, then a baseline, then more K): the
    pipeline skips what is complete, so N_pre and its features are made once.

    experiment: ``control`` | ``selfsup`` | ``teacher``; role: ``signal`` (N_pre only),
    ``select`` (validation sweep), ``headline`` (3 seeds), ``baseline`` (distill / N_pre 2x),
    ``multitask``, ``ksweep``, ``diagnose``, ``ceiling`` (supervised on true labels).
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
    # the baselines of the step's *run*: every step of a run shares one config (but its K), so
    # that the graph's fingerprints agree between the steps that share stage folders (a probe
    # folder probes every network of the run)
    run_pre2x: bool = False
    run_distill: bool = False

    @property
    def tag(self) -> str:
        """The records' ``experiment``: diagnostic runs are kept apart from the headline cells."""
        return LONG_PRE if self.pre_epochs else self.experiment


def control_run(p: float, seed: int, pre_epochs: int | None = None) -> str:
    long = f"-pre{pre_epochs}ep" if pre_epochs else ""
    return f"ctl-p{round(p * 100):02d}-s{seed}{long}"


def selfsup_run(task: str, seed: int) -> str:
    return f"ss-{task.replace('+', '-')}-s{seed}"


def teacher_run(objective: str, seed: int) -> str:
    return f"tch-{objective}-s{seed}"


def _tag(ks: tuple[int, ...]) -> str:
    return "k" + "-".join("sel" if k == SELECT else str(k) for k in ks)


def build_plan(scale: Scale) -> list[Step]:
    """The steps of ``scale``'s suite in order (by its regime); each step knows the baselines
    of its run (``run_pre2x``, ``run_distill``: those of any of the run's steps)."""
    steps = _teacher_plan(scale) if scale.regime == "teacher" else _control_plan(scale)
    pre2x = {s.run for s in steps if s.pre2x}
    distill = {s.run for s in steps if s.distill}
    return [
        dataclasses.replace(s, run_pre2x=s.run in pre2x, run_distill=s.run in distill)
        for s in steps
    ]


def _control_plan(scale: Scale) -> list[Step]:
    """Selection, headline cells (all seeds), baselines, then K sweeps.

    Ordered so that each claim becomes testable as early as possible: the control experiment at
    p = 75% and 50% and distillation first (the p >= 50 and distillation claims), then the
    self-supervised cells (their three claims), then p = 0 and 25% (the trend with p), N_pre 2x,
    and the remaining K sweeps last. In the over-fitting regime N_pre 2x runs beside each
    headline cell (every seed), so that C5 is judged as soon as C2 is.
    """
    steps: list[Step] = []
    seeds = scale.seeds
    s0 = seeds[0]

    def ctl(role: str, p: float, seed: int, ks: tuple[int, ...], **kw: Any) -> None:
        extra = "".join(f"-{k}" for k, v in kw.items() if v and k != "pre_epochs")
        if kw.get("pre_epochs"):
            extra += f"-pre{kw['pre_epochs']}ep"
        steps.append(
            Step(
                name=f"control/{role}/p{round(p * 100):02d}/s{seed}/{_tag(ks)}{extra}",
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
        extra = "".join(f"-{k}" for k, v in kw.items() if v)
        steps.append(
            Step(
                name=f"selfsup/{role}/{task}/s{seed}/{_tag(ks)}{extra}",
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

    # 0. does N_pre learn (in the over-fitting regime: memorise) the labels at the highest
    #    noise? Train accuracy on the noisy labels against 1 - p, before anything else is spent.
    #    The over-fitting regime checks p = 0.5 too (its target: >= 90 % at both).
    signal = [max(scale.noise)]
    if scale.regime == "overfit":
        signal = sorted((p for p in scale.noise if p >= 0.5), reverse=True)
    for p in signal:
        steps.append(
            Step(
                name=f"control/signal/p{round(p * 100):02d}/s{s0}/pretrain",
                run=control_run(p, s0),
                experiment="control",
                role="signal",
                objective="supervised",
                seed=s0,
                ks=(),
                noise=p,
                validation=True,
                only="pretrain",
            )
        )
    # 1. selection of K on validation (control, at select_noise; seed 0)
    ctl("select", scale.select_noise, s0, scale.k_control)
    # 2. headline control cells at p >= 50 (all seeds), then distillation
    first = [p for p in scale.noise if p >= 0.5]
    later = [p for p in scale.noise if p < 0.5]
    with_pre2x = scale.pre2x and scale.pre2x_all_seeds

    def headline(p: float, seed: int) -> None:
        ctl("headline", p, seed, (SELECT,))
        if p in scale.distill_noise and with_pre2x:
            ctl("baseline", p, seed, (SELECT,), distill=True)
        if with_pre2x:
            ctl("baseline", p, seed, (SELECT,), pre2x=True)

    # seed by seed, so that p = 0.75 and 0.5 both have a first result early
    for seed in seeds:
        for p in first:
            headline(p, seed)
    if not with_pre2x:
        for p in scale.distill_noise:
            if p in scale.noise:
                for seed in seeds:
                    ctl("baseline", p, seed, (SELECT,), distill=True)
    # 2b. the diagnostic: does the gain depend on how long N_pre trained? (seed 0)
    for p in scale.long_pre_noise:
        ctl("diagnose", p, s0, (SELECT,), pre_epochs=scale.long_pre_epochs)
    # 3. self-supervised: selection (seed 0, every K), headline seeds, multi-task
    if scale.selfsup:
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
            headline(p, seed)
    # 5. N_pre 2x (seed 0): every p, and Jigsaw
    if scale.pre2x and not scale.pre2x_all_seeds:
        for p in scale.noise:
            ctl("baseline", p, s0, (SELECT,), pre2x=True)
    if scale.selfsup:
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


#: The teacher suite's N_pre objectives besides the pre-trained network: the self-supervised
#: networks trained on the same D_cf, and supervised training on CIFAR-10's true labels (the
#: ceiling; ``label_noise`` 0).
TEACHER_OBJECTIVES = ("pretrained", "rotnet", "jigsaw", "supervised")


def _teacher_plan(scale: Scale) -> list[Step]:
    """The pre-trained teacher (§5.1 in spirit): K picked on validation (seed 0), then 3 seeds
    of ClusterFit from EfficientNet-Lite0, then the same N_cf architecture trained by RotNet,
    Jigsaw (and ClusterFit of those) and by supervision on the true labels."""
    steps: list[Step] = []
    s0 = scale.seeds[0]

    def add(role: str, objective: str, seed: int, ks: tuple[int, ...]) -> None:
        steps.append(
            Step(
                name=f"teacher/{role}/{objective}/s{seed}/{_tag(ks) if ks else 'pretrain'}",
                run=teacher_run(objective, seed),
                experiment="teacher",
                role=role,
                objective=objective,
                seed=seed,
                ks=ks,
                noise=0.0 if objective == "supervised" else None,
                validation=seed == s0,
                only=None if ks else "pretrain",
            )
        )

    # seed by seed, so that a suite cut short has every objective at the seeds it reached
    for seed in scale.seeds:
        if seed == s0:
            add("select", "pretrained", s0, scale.k_control)
        else:
            add("headline", "pretrained", seed, (SELECT,))
        for objective in ("rotnet", "jigsaw"):
            add("headline", objective, seed, (SELECT,))
        add("ceiling", "supervised", seed, (SELECT,))
    return steps


def run_names(plan: Sequence[Step]) -> list[str]:
    return list(dict.fromkeys(s.run for s in plan))


def filter_plan(plan: Sequence[Step], only: Sequence[str]) -> list[Step]:
    """Steps whose experiment, role, objective or run name matches any word of ``only``
    (or whose name starts with one: ``control/headline/p50``)."""
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
    """Image passes of one training (RotNet: 4 rotated copies; Jigsaw: 9 small patches ~ 0.8;
    a pre-trained N_pre: none)."""
    if objective == "pretrained":
        return 0.0
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
    layers = len(SELFSUP_LAYERS if step.experiment != "control" else CONTROL_LAYERS)
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
        if (step.pre2x or step.run_pre2x) and (step.run, "pre2x") not in have:
            have.add((step.run, "pre2x"))
            epochs = (scale.rot_epochs if step.objective == "rotnet" else scale.epochs) + (
                scale.epochs
            )
            t += _train_passes(scale, step.objective, epochs) / scale.train_ips
            nets += 1
        if (step.distill or step.run_distill) and (step.run, "distill") not in have:
            have.add((step.run, "distill"))
            t += 1.35 * _train_passes(scale, "supervised") / scale.train_ips
            nets += 1
        out.append(t + nets * _probe_seconds(scale, step))
    return out


def default_ks(scale: Scale, selection: dict[str, Any] | None = None) -> dict[str, int]:
    """The K assumed for ``SELECT`` before the choice is made (picked ones where known)."""
    selection = selection or {}
    mid = scale.k_control[len(scale.k_control) // 2] if scale.k_control else 0
    return {
        "control": selection.get("control", {}).get("k", mid),
        "teacher": selection.get("teacher", {}).get("k", mid),
        "selfsup": selection.get("selfsup", {}).get(
            "k", scale.k_selfsup[0] if scale.k_selfsup else 0
        ),
    }


def budget_line(scale: Scale, plan: Sequence[Step]) -> str:
    total = sum(estimate(plan, scale, default_ks(scale)))
    where = (
        "a quiet 2-core machine; more when it is shared"
        if scale.device == "cpu"
        else "one GPU, assumed; the script stops at its time limit and resumes on its next call"
    )
    return (
        f"about {total / 3600:.1f} h of this machine for the {len(plan)} steps at "
        f"{scale.train_ips:.0f} training / {scale.infer_ips:.0f} inference images/s ({where})."
    )


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def runs_root() -> Path:
    """Where run folders live: ``$CLUSTERFIT_CACHE/paper-runs`` (default
    ``~/.cache/clusterfit/paper-runs``), outside the work tree, so that a fresh checkout on the
    same machine resumes from them; ``--runs`` overrides."""
    import os

    root = os.environ.get("CLUSTERFIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "clusterfit"
    return base / "paper-runs"


@dataclass
class Paths:
    """Where a suite reads and writes."""

    runs: Path
    results_json: Path
    results_md: Path | None
    report_dir: Path

    @classmethod
    def for_scale(cls, scale: Scale, runs: Path | None = None) -> Paths:
        """Run folders under ``runs`` (default :func:`runs_root`) / the suite's name; results
        under ``benchmarks/results``. The full, over-fitting and teacher suites render
        ``benchmarks/RESULTS.md`` together; quick and gpu a markdown file of their own."""
        results = HERE / "results"
        run_dir = (runs or runs_root()) / scale.out_name.replace("_", "-")
        shared_md = scale.name in ("full", "overfit", "teacher")
        return cls(
            runs=run_dir,
            results_json=results / f"{scale.out_name}.json",
            results_md=HERE / "RESULTS.md" if shared_md else results / f"{scale.out_name}.md",
            report_dir=results / f"{scale.out_name}_report",
        )


def targets(scale: Scale, data: Any, validation: bool, image_size: int = 32) -> list[Any]:
    """Probe targets: CIFAR-10 and Fashion-MNIST test splits (+ their validation splits)."""
    from clusterfit.config import TargetConfig

    cifar, fmnist = str(data.cifar_csv), str(data.fmnist_csv)

    def target(name: str, source: str, test: str, limit: int, test_limit: int) -> Any:
        return TargetConfig(
            name=name,
            source=source,
            train_split="train",
            test_split=test,
            image_size=image_size,
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
    from clusterfit.stages.graph import folder
    from clusterfit.train.engine import CHECKPOINT

    s = scale
    net = f"{{depth: {s.depth}, width: {s.width}}}"
    over = [
        f"name={step.run}",
        f"out_dir={paths.runs}",
        f"seed={step.seed}",
        f"device={device or s.device}",
        f"progress={str(progress).lower()}",
        f"data.source={data.cifar_csv}",
        "data.split=train",
        f"data.limit={s.n_images}",
        f"pretrain.arch={s.arch}",
        f"pretrain.arch_kwargs={net if s.arch == 'resnet_cifar' else '{}'}",
        f"pretrain.train.batch_size={s.batch_size}",
        f"pretrain.train.lr={s.lr}",
        f"pretrain.train.augment={str(s.augment).lower()}",
        f"fit.train.epochs={s.epochs}",
        "extract.layer=pool",
        "extract.normalize=true",
        "cluster.method=kmeans",
        "cluster.n_iter=25",
        f"probe.n_updates={s.n_updates}",
        f"probe.max_dims={s.max_dims}",
        # every cell of the suites is probed in float32 SGD products, so that they compare
        # with each other and with the finished cells (a library default must not move them)
        "probe.precision=float32",
        # the random-init floor is probed once per seed, in the single-task headline runs
        "probe.random_baseline=" + ("false" if step.role in ("multitask", "diagnose") else "true"),
        f"baselines.pre2x={str(step.pre2x or step.run_pre2x).lower()}",
        f"baselines.distill={str(step.distill or step.run_distill).lower()}",
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
    elif step.objective == "supervised":  # the teacher suite's ceiling: the true labels
        over += [
            "pretrain.objective=supervised",
            "pretrain.label_noise=0.0",
            f"pretrain.train.epochs={s.epochs}",
        ]
    elif step.objective == "pretrained":
        over += [
            "pretrain.objective=pretrained",
            f"pretrain.arch={TEACHER_ARCH}",
            "pretrain.arch_kwargs={}",
            f"pretrain.input_size={TEACHER_INPUT}",
            "fit.arch=resnet_cifar",
            f"fit.arch_kwargs={net}",
        ]
    cfg = load_config(None, over)
    cfg.probe.layers = list(CONTROL_LAYERS if step.experiment == "control" else SELFSUP_LAYERS)
    cfg.probe.targets = targets(s, data, step.validation)
    cfg.sweep_k = list(ks)
    # a pretraining-only step's K is not used, but it must be a valid one for the data
    cfg.cluster.k = min(ks or s.k_control or (cfg.cluster.k,))
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
