"""The runner: runs a suite's steps, asking the run graph which stages are complete.

For every :class:`~benchmarks.paper.plan.Step` the runner builds the step's config and asks
:mod:`clusterfit.stages` for the :class:`~clusterfit.artifacts.Stage` of each stage the step needs
(``pretrain.stage``, ``cluster.stage``, ``fit.stage``, ``probe.stage`` per K, ``baselines.stage``):
their folders and fingerprints come from the graph (:mod:`clusterfit.stages.graph`), never from a
folder name built here, and ``Stage.is_complete()`` (meta.json with this config's fingerprint) is
the only sign a stage is done. Records are read from the complete probe stages; a run folder that
is gone (a new machine) keeps the records the suite's JSON already holds, and its steps stay
done, so the committed results are never lost and never recomputed by accident.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.paper import claims as C
from benchmarks.paper.plan import (
    SELECT,
    Paths,
    Step,
    budget_line,
    build_plan,
    filter_plan,
    make_config,
    run_names,
)
from benchmarks.paper.scale import MULTITASK, VAL_TARGETS, Scale


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def load_doc(paths: Paths) -> dict[str, Any]:
    return read_json(paths.results_json) if paths.results_json.is_file() else {}


def resolve_ks(step: Step, selection: dict[str, Any]) -> list[int] | None:
    """The step's K values with ``SELECT`` replaced by the K picked on validation (None: not
    picked yet)."""
    k_sel = selection.get(step.experiment, {}).get("k")
    if SELECT in step.ks and k_sel is None:
        return None
    return [k_sel if k == SELECT else k for k in step.ks]


# --------------------------------------------------------------------------------------------
# The run graph of a step
# --------------------------------------------------------------------------------------------


#: Loaded D_cf and probe targets, shared by the contexts of every step with the same data
#: settings and seed (as ``Context.with_k`` shares them between the K of a sweep): reading the
#: 60,000-row file lists once, not once per step.
_BASES: dict[str, Any] = {}


def _context(cfg: Any) -> Any:
    """A :class:`~clusterfit.stages.Context` for ``cfg`` whose data and targets are loaded once
    per (data settings, targets, seed); its stages (fingerprints) are its own."""
    from clusterfit.artifacts import fingerprint
    from clusterfit.stages import Context

    targets = [dataclasses.asdict(t) for t in cfg.probe.targets]
    key = fingerprint([dataclasses.asdict(cfg.data), targets, cfg.seed, cfg.device])
    base = _BASES.get(key)
    if base is None:
        base = _BASES[key] = Context.create(cfg)
        base.data()
    return dataclasses.replace(base, cfg=cfg, stages={})


def step_stages(cfg: Any, step: Step) -> dict[str, Any]:
    """The :class:`~clusterfit.artifacts.Stage` of every stage ``step`` needs, by folder name,
    as the run graph makes them for ``cfg`` (so their fingerprints are this config's)."""
    from clusterfit.stages import baselines, cluster, fit, pretrain, probe

    ctx = _context(cfg)
    stages = [pretrain.stage(ctx, task) for task in range(len(ctx.pretrain_configs))]
    if step.only != "pretrain":
        for k in cfg.sweep_k:
            v = ctx.with_k(k)
            stages += [cluster.stage(v), fit.stage(v), probe.stage(v)]
        stages += [baselines.stage(ctx, key) for key in baselines.enabled(ctx)]
    return {s.name: s for s in stages}


def complete(stage: Any) -> bool:
    """``stage.is_complete()``, False when its folder is damaged (it will be made again)."""
    try:
        return bool(stage.is_complete())
    except Exception:
        return False


@dataclasses.dataclass
class StepState:
    """What the graph says of one step: its stages (by folder) and which are complete."""

    step: Step
    ks: list[int] | None
    stages: dict[str, Any]
    error: str | None = None

    @property
    def done(self) -> bool:
        return (
            self.ks is not None
            and bool(self.stages)
            and all(complete(s) for s in self.stages.values())
        )

    @property
    def missing(self) -> list[str]:
        return [name for name, s in self.stages.items() if not complete(s)]


def step_state(
    step: Step, scale: Scale, data: Any, paths: Paths, selection: dict[str, Any]
) -> StepState:
    """Ask the run graph about ``step`` (nothing runs)."""
    ks = resolve_ks(step, selection)
    if ks is None:
        return StepState(step, None, {})
    try:
        cfg = make_config(step, scale, data, paths, ks)
        return StepState(step, ks, step_stages(cfg, step))
    except Exception as e:
        return StepState(step, ks, {}, error=f"{type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------------
# Results: collect the records of complete stages
# --------------------------------------------------------------------------------------------


def stage_summary(stage: Any) -> dict[str, Any] | None:
    """A complete stage's summary figures, wall seconds, training images/s and (pretraining)
    the train-accuracy curve from its ``log.jsonl``."""
    meta = stage.meta() if complete(stage) else None
    if meta is None:
        return None
    s = dict(meta.get("summary", {}))
    s.pop("table", None)
    if meta.get("seconds") is not None:
        s["seconds"] = meta["seconds"]
    log = stage.dir / "log.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        ips = [r["images_per_s"] for r in rows if "images_per_s" in r]
        if ips:
            s["images_per_s_median"] = sorted(ips)[len(ips) // 2]
        acc = [round(r["train_acc"], 2) for r in rows if "train_acc" in r]
        if acc and stage.name.startswith(("pretrain", "baseline")):
            s["train_acc_curve"] = acc
    return s


def step_records(state: StepState) -> list[dict[str, Any]]:
    """The probe records of ``state``'s complete probe stages, tagged with the step."""
    step = state.step
    out: list[dict[str, Any]] = []
    for name, stage in state.stages.items():
        if not name.startswith("probe") or not complete(stage):
            continue
        for r in read_json(stage.dir / "results.json")["records"]:
            if step.role == "multitask" and r["model"] != "N_cf":
                continue  # N_pre are the single-task runs' networks, reported there
            rec = {k: v for k, v in r.items() if k != "extra"}
            rec["run"] = step.run
            rec["experiment"] = step.tag
            if step.role == "multitask":
                rec["objective"] = MULTITASK
            elif step.experiment == "teacher":
                rec["objective"] = step.objective
            rec["split"] = "val" if r["target"] in VAL_TARGETS else "test"
            out.append(rec)
    return out


def _record_key(r: dict[str, Any]) -> tuple:
    return (
        r.get("run"),
        r["model"],
        r["layer"],
        r["target"],
        r["protocol"],
        r["metric"],
        r.get("k"),
        r.get("shots"),
        r.get("objective"),
    )


def collect(
    paths: Paths,
    plan: Sequence[Step],
    scale: Scale,
    data: Any,
    old: dict[str, Any],
) -> tuple[list[dict], dict[str, Any], dict[str, bool]]:
    """Records, stage summaries (``cells``) and done-ness of every step.

    Runs whose folder exists are read through the graph (the K picked on validation first, so
    that the steps at the picked K can be resolved); a run whose folder is absent keeps the
    records, cells and done flags of ``old`` (the suite's JSON).
    """
    old_records = old.get("records", [])
    old_cells = old.get("cells", {})
    old_steps = old.get("steps", {})
    present = {run for run in run_names(plan) if (paths.runs / run).is_dir()} if data else set()
    records = [r for r in old_records if r.get("run") not in present]
    cells = {run: c for run, c in old_cells.items() if run not in present}
    done: dict[str, bool] = {}
    seen: set[tuple] = {_record_key(r) for r in records}
    states: dict[str, StepState] = {}
    # selection steps first: the other steps' K depends on them
    order = sorted(plan, key=lambda s: s.role != "select")
    for step in order:
        if step.run not in present:
            done[step.name] = bool(old_steps.get(step.name))
            continue
        selection = C.selections(records, scale)
        state = states[step.name] = step_state(step, scale, data, paths, selection)
        done[step.name] = state.done
        for rec in step_records(state):
            key = _record_key(rec)
            if key not in seen:
                seen.add(key)
                records.append(rec)
        for name, stage in state.stages.items():
            if name.startswith(("pretrain", "fit", "baseline", "clusters", "probe")):
                s = stage_summary(stage)
                if s is not None:
                    cells.setdefault(step.run, {})[name] = s
    return records, cells, {s.name: done[s.name] for s in plan}


def write_results(
    paths: Paths,
    scale: Scale,
    plan: Sequence[Step],
    data: Any,
    extra: dict[str, Any] | None = None,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Collect every finished run, write the JSON, the markdown and the plots; return the doc."""
    from benchmarks.paper import render

    old = load_doc(paths)
    records, cells, done = collect(paths, plan, scale, data, old)
    selection = C.selections(records, scale)
    doc = {
        "suite": scale.name,
        "regime": scale.regime,
        "scale": dataclasses.asdict(scale),
        "command": scale.command,
        "runs": str(paths.runs).replace(str(Path.home()), "~"),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps_done": sum(done.values()),
        "steps_total": len(plan),
        "steps": done,
        "throughput": old.get("throughput"),
        **{k: v for k, v in old.items() if k in ("pilot_notes", "pilot", "budget")},
        **(extra or {}),
        "selection": selection,
        "signal_check": C.signal_check(records, cells, scale),
        "long_pre_check": C.long_pre_check(records, cells, scale, selection),
        "gain_vs_memorisation": C.gain_vs_memorisation(records, cells, scale, selection),
        "claims": C.evaluate_claims(records, scale, selection),
        "cells": cells,
        "records": records,
    }
    atomic_json(paths.results_json, doc)
    render.write_all(paths, scale, doc, make_plots=make_plots)
    return doc


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


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
    """Torch threads for the next stage: ``requested``, else 1 on a busy machine, else all cores.

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


def prepare_data(data_root: Path) -> Any:
    from benchmarks import paper_data

    return paper_data.prepare(data_root)


def run_suite(
    scale: Scale,
    only: Sequence[str],
    data_root: Path,
    progress: bool,
    device: str | None,
    pilot: bool,
    threads_arg: int | None = None,
    runs: Path | None = None,
    paths: Paths | None = None,
) -> int:
    """Run the steps of ``scale``'s plan (those ``only`` selects) that the graph says are not
    complete; results are rewritten after each step. Returns 0, or 1 when a step failed."""
    import torch

    from clusterfit.stages import STAGES, run_pipeline

    data = prepare_data(data_root)
    paths = paths or Paths.for_scale(scale, runs)
    if not take_lock(paths.runs):
        return 2
    full_plan = build_plan(scale)
    plan = [s for s in full_plan if s.role in ("select", "signal")] if pilot else full_plan
    plan = filter_plan(plan, only)
    extra = {"budget": budget_line(scale, full_plan)}
    if scale.regime == "overfit":
        from benchmarks.paper.scale import OVERFIT_PILOT

        extra["pilot"] = OVERFIT_PILOT
    failures = 0
    print(f"{len(plan)} steps; runs under {paths.runs}; torch threads {torch.get_num_threads()}")
    for i, step in enumerate(plan):
        head = f"[{i + 1}/{len(plan)}] {step.name}"
        doc = load_doc(paths)
        selection = doc.get("selection", {})
        # a step done on another machine (its run folder is not here) is not redone; the quick
        # suite, a check of the whole path, always runs
        elsewhere = scale.name != "quick" and not (paths.runs / step.run).is_dir()
        if elsewhere and doc.get("steps", {}).get(step.name):
            print(f"{head}: done (in {paths.results_json.name}; its run folder is elsewhere)")
            continue
        state = step_state(step, scale, data, paths, selection)
        if state.ks is None:
            print(f"{head}: waiting for the K picked on validation")
            continue
        if state.error:
            print(f"{head}: not ready ({state.error})")
            continue
        if state.done:
            print(f"{head}: done")
            continue
        print(f"{head}: run {step.run}, K {state.ks}; to make: {state.missing}", flush=True)
        started = time.perf_counter()
        try:
            cfg = make_config(step, scale, data, paths, state.ks, progress=progress, device=device)
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
            print(f"{head}: FAILED, going on", flush=True)
            continue
        print(f"{head}: {time.perf_counter() - started:.0f} s", flush=True)
        write_results(paths, scale, full_plan, data, extra)
    write_results(paths, scale, full_plan, data, extra)
    return 1 if failures else 0


def report_only(scale: Scale, data_root: Path | None, runs: Path | None = None) -> dict:
    """Rebuild the suite's JSON, markdown and plots from its run folders (where they exist) and
    its JSON (where they do not)."""
    paths = Paths.for_scale(scale, runs)
    plan = build_plan(scale)
    data = None
    if data_root is not None and paths.runs.is_dir():
        try:
            data = prepare_data(data_root)
        except Exception as e:
            print(f"data not prepared ({e}); rendering from {paths.results_json}", file=sys.stderr)
    old = load_doc(paths)
    return write_results(paths, scale, plan, data, {"budget": old.get("budget")})


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
