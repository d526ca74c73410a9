"""Stage 5: linear probes on frozen features of several layers, N_pre against N_cf (paper App. D).

For every network (a randomly initialised one of N_pre's architecture as the floor, its BatchNorm
statistics re-estimated on the target's train images with the weights untouched; N_pre; N_cf),
every target (a labelled train and test split) and every layer of ``probe.layers``: features of the
target's images, average-pooled to at most ``probe.max_dims`` dimensions (the paper's ~9k), a
linear classifier trained on the train split (its learning rate chosen on a validation split carved
from it), top-1 / top-5 on the test split; and a kNN (cosine, k=20) on the pooled penultimate
features as a second opinion. Each (network, target) is a cell cached under ``probe_cells/``, so a
change that touches only N_cf reprobes only N_cf. Writes ``probe/results.json``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit.artifacts import Stage, fingerprint, read_json, write_json
from clusterfit.config import (
    TargetConfig,
    VideoConfig,
    pretrain_settings,
    resolved_fit_train,
    resolved_target,
)
from clusterfit.data import ImageSet, center_crop, load_dataset, to_float
from clusterfit.errors import DataError
from clusterfit.evaluate import knn_accuracy, linear_probes, lowshot_eval, pool_to_dims, svm_map
from clusterfit.evaluate._common import l2_normalize
from clusterfit.evaluate.linear import resolve_precision
from clusterfit.features import compute_features
from clusterfit.models import Net, build_from_args, recalibrate_batchnorm
from clusterfit.stages import baselines, fit, graph, pretrain
from clusterfit.stages.context import Context, clip_settings, finish, start, up_to_date
from clusterfit.train.engine import CHECKPOINT

CELLS = "probe_cells"  # beside probe/, so that a redone probe stage keeps the finished cells
#: How the random-init floor is made (part of its cells' keys): BatchNorm statistics re-estimated
#: on up to RANDOM_BN_IMAGES train images of the target (:func:`random_floor`).
RANDOM_FLOOR = "bn-recalibrated"
RANDOM_BN_IMAGES = 2048
MODEL_ORDER = ("random", "N_pre", "N_pre_2", "N_pre_3", "N_pre_2x", "distill", "N_cf")


def _probe_settings(ctx: Context) -> dict[str, Any]:
    """The probe protocol (what a cell is keyed by), its precision resolved for this machine."""
    p = asdict(ctx.cfg.probe)
    p.pop("targets")
    p.pop("random_baseline")
    p["precision"] = resolve_precision(p["precision"], ctx.device)
    return {**p, "seed": ctx.cfg.seed}


def probed(ctx: Context) -> list[graph.Probed]:
    """The networks to probe, in table order: the random-init floor, every N_pre, the baselines,
    N_cf. The floor's stage is N_pre's (its architecture), its name keys its own cells."""
    out = []
    if ctx.cfg.probe.random_baseline:
        out.append(graph.Probed("random", "random", pretrain.stage(ctx)))
    for task in range(len(ctx.pretrain_configs)):
        out.append(
            graph.Probed(pretrain.model_name(task), "pretrain", pretrain.stage(ctx, task), task)
        )
    for key in baselines.enabled(ctx):
        out.append(
            graph.Probed(baselines.MODELS[key], "baselines", baselines.stage(ctx, key), key=key)
        )
    out.append(graph.Probed("N_cf", "fit", fit.stage(ctx)))
    return out


def model_fingerprint(m: graph.Probed) -> str:
    """What a probed network's cells are keyed by."""
    if m.kind == "random":
        return fingerprint({"random_init_of": m.stage.fingerprint, "floor": RANDOM_FLOOR})
    return m.stage.fingerprint


def targets(ctx: Context) -> list[tuple[TargetConfig, tuple]]:
    """Every probe target (sizes resolved) with its loaded (train, train_y, test, test_y), loaded
    once per run."""
    out = []
    for t in ctx.cfg.probe.targets:
        r = resolved_target(ctx.cfg, t)
        key = fingerprint(asdict(r))
        if key not in ctx.targets:
            ctx.targets[key] = load_target(r, ctx.cfg.seed, ctx.progress, ctx.cfg.data.video)
        out.append((r, ctx.targets[key]))
    return out


def target_fingerprint(loaded: tuple) -> str:
    """The content of a loaded target: its images' fingerprints and its labels."""
    train, train_y, test, test_y = loaded
    labels = hashlib.sha256(np.ascontiguousarray(train_y).tobytes())
    labels.update(np.ascontiguousarray(test_y).tobytes())
    return fingerprint([train.fingerprint, test.fingerprint, labels.hexdigest()])


@graph.memo("probe")
def stage(ctx: Context) -> Stage:
    """The probe stage: its settings, the targets (their settings and their content) and the
    probed networks' fingerprints."""
    loaded = targets(ctx)
    config = {"probe": _probe_settings(ctx), "targets": [asdict(t) for t, _ in loaded]}
    inputs = {m.name: model_fingerprint(m) for m in probed(ctx)}
    inputs |= {f"target:{t.name}": target_fingerprint(data) for t, data in loaded}
    return Stage(ctx.run_dir, graph.folder("probe", variant=ctx.variant), config, inputs)


def load_net(ctx: Context, m: graph.Probed) -> Net:
    """The probed network: its stage's checkpoint (checked complete by :func:`run`), or for the
    random floor a fresh, seeded network of N_pre's architecture."""
    net = ctx.load_model(m.stage.dir / CHECKPOINT)
    if m.kind != "random":
        return net
    torch.manual_seed(ctx.cfg.seed + 2)
    return build_from_args(net.model_args, ctx.module_factory)


def random_floor(ctx: Context, net: Net, train: ImageSet) -> Net:
    """The random-init network with its BatchNorm statistics re-estimated on (up to
    :data:`RANDOM_BN_IMAGES` of) the target's train images, the weights untouched."""
    net = net.to(ctx.device)
    bs = ctx.cfg.probe.batch_size
    n = min(len(train), RANDOM_BN_IMAGES)
    batches = (
        to_float(center_crop(train.images[lo : min(lo + bs, n)], train.crop_size)).to(ctx.device)
        for lo in range(0, n, bs)
    )
    recalibrate_batchnorm(net, batches)
    return net.eval()


def load_target(
    t: TargetConfig, seed: int, progress: bool, video: VideoConfig | None = None
) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray]:
    """A target's train images and labels, then its test images and labels. Labels are class
    indices (N), or for a multi-label target an N x C 0/1 matrix from the CSV's ``labels``.
    ``t`` as resolved by :func:`clusterfit.config.resolved_target` (sizes inherited from the
    data); the images carry ``t.crop_size``, which :func:`compute_features` centre-crops to.
    A target of video files is cut into clips by ``video`` (the run's ``data.video``)."""
    video = video or VideoConfig()
    out: list[Any] = []
    for split, limit in ((t.train_split, t.limit), (t.test_split, t.test_limit)):
        images = load_dataset(
            t.source,
            split,
            image_size=t.image_size,
            crop_size=t.crop_size,
            limit=limit,
            seed=seed,
            progress=progress,
            clip=clip_settings(video),
            fps=video.fps,
        )
        if t.multilabel:
            labels = read_multilabels(Path(t.source), split)
        elif not images.has_labels or (images.labels < 0).any():
            raise DataError(
                f"probe target '{t.name}': its {split} split ({images.source}) needs a label for "
                "every image (one sub-folder per class, or a CSV label column)"
            )
        else:
            labels = images.labels
        out += [images, labels]
    if t.multilabel and out[1].shape[1] != out[3].shape[1]:
        raise DataError(f"probe target '{t.name}': train and test name different classes")
    return out[0], out[1], out[2], out[3]


def read_multilabels(csv_path: Path, split: str | None) -> np.ndarray:
    """N x C int matrix (1 = the item has the class) from a CSV file list's ``labels`` column,
    classes separated by ';' and sorted by name over the whole file; rows in file order."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "labels" not in rows[0]:
        raise DataError(f"{csv_path}: a multi-label target needs a 'labels' column ('a;b;c')")
    names = sorted({c for r in rows for c in (r["labels"] or "").split(";") if c})
    if split is not None and "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split]
    index = {c: i for i, c in enumerate(names)}
    out = np.zeros((len(rows), len(names)), dtype=np.int64)
    for i, r in enumerate(rows):
        for c in (r["labels"] or "").split(";"):
            if c:
                out[i, index[c]] = 1
    return out


def _n_clusters(ctx: Context) -> int:
    """K that N_cf was trained on, as its own stage recorded it (prototype clustering makes one
    per class); never read from the clusters folder, which a later run may have changed."""
    meta = fit.stage(ctx).require("fit")
    return int(meta["summary"]["k"])


def _context_fields(ctx: Context, m: graph.Probed) -> dict[str, Any]:
    """The facts a report groups by: K (N_cf only), N_pre's objective and label noise, seed."""
    p = ctx.pretrain_configs[m.task]
    return {
        "k": _n_clusters(ctx) if m.kind == "fit" else None,
        "label_noise": p.label_noise if p.objective == "supervised" else None,
        "objective": p.objective,
        "seed": ctx.cfg.seed,
        "shots": None,
    }


def settings_digest(ctx: Context, m: graph.Probed) -> str:
    """What a probed network and its probe were made with, seed left out: records of two runs
    are seeds of one quantity only when these agree (architecture, recipe, data and its size,
    clustering, probe protocol). K is a record field of its own, so it is left out too."""
    cfg = ctx.cfg
    probe_settings = {k: v for k, v in _probe_settings(ctx).items() if k != "seed"}
    made: dict[str, Any] = {"data": asdict(cfg.data), "n_items": len(ctx.data())}
    made["probe"] = probe_settings
    if m.kind == "fit":
        made["pretrain"] = [pretrain_settings(p) for p in ctx.pretrain_configs]
        made["extract"] = asdict(cfg.extract)
        made["cluster"] = {k: v for k, v in asdict(cfg.cluster).items() if k != "k"}
        made["fit"] = {"arch": fit.architecture(ctx), "train": asdict(resolved_fit_train(cfg))}
    elif m.kind == "baselines":
        made["pretrain"] = pretrain_settings(cfg.pretrain)
        made["baselines"] = asdict(cfg.baselines)
    else:
        made["pretrain"] = pretrain_settings(ctx.pretrain_configs[m.task])
        made["random"] = m.kind == "random"
    return fingerprint(made)[:12]


def linear_protocol(ctx: Context) -> dict[str, Any]:
    """The keyword arguments of :func:`clusterfit.evaluate.linear_probe` that the run's probe
    settings fix (rates, updates, batch, seed, device, precision)."""
    pc = ctx.cfg.probe
    return {
        "lrs": tuple(pc.lrs),
        "n_updates": pc.n_updates,
        "batch_size": pc.batch_size,
        "seed": ctx.cfg.seed,
        "device": ctx.device,
        "progress": ctx.progress,
        "precision": pc.precision,
    }


def cell_features(
    ctx: Context,
    net: Net,
    name: str,
    train: ImageSet,
    test: ImageSet,
    layers: list[str],
    reuse: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The features of ``layers`` (each average-pooled to at most ``probe.max_dims``; N x D) of
    a target's train and test images, each layer extracted once in one pass over the images.
    ``reuse``: an earlier cell's (train, test) features, overwritten where the shapes match
    (:func:`~clusterfit.features.compute_features`)."""
    pc = ctx.cfg.probe
    layers = list(dict.fromkeys(layers))
    pool = functools.partial(pool_to_dims, max_dims=pc.max_dims)
    common = {"batch_size": pc.batch_size, "device": ctx.device, "progress": ctx.progress}
    old_train, old_test = reuse or ({}, {})
    feats_train = compute_features(
        net, train, layers, pool=pool, desc=f"{name} train", reuse=old_train, **common
    )
    feats_test = compute_features(
        net, test, layers, pool=pool, desc=f"{name} test", reuse=old_test, **common
    )
    assert feats_train is not None and feats_test is not None
    return feats_train, feats_test


def probe_cell(
    ctx: Context,
    net: Net,
    m: graph.Probed,
    target: TargetConfig,
    train: ImageSet,
    train_y: np.ndarray,
    test: ImageSet,
    test_y: np.ndarray,
    spare: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None,
) -> list[dict[str, Any]]:
    """All probes of one network on one target: a linear probe per layer, and kNN on ``pool``.

    ``spare``: the previous cell's features, by target. This cell overwrites them when they are
    of its target (the same shapes: no fresh arrays to fault in) and frees them otherwise, then
    leaves its own there for the next cell."""
    pc = ctx.cfg.probe
    wanted = [
        *pc.layers,
        *(["pool"] if pc.knn else []),
        *(pc.lowshot_layers if pc.lowshot_shots else []),
    ]
    reuse = None
    if spare is not None:
        reuse = spare.pop(target.name, None)
        spare.clear()  # another target's: freed before this cell's are made
    feats_train, feats_test = cell_features(ctx, net, m.name, train, test, wanted, reuse)
    if spare is not None:
        spare[target.name] = (feats_train, feats_test)
    base = {"model": m.name, "target": target.name, **_context_fields(ctx, m)}
    records = []

    def record(layer: str, protocol: str, metric: str, value: float, **extra: Any) -> None:
        records.append(
            {
                **base,
                "layer": layer,
                "protocol": protocol,
                "metric": metric,
                "value": float(value),
                "extra": extra,
            }
        )

    if target.multilabel:
        for layer in pc.layers:
            res = svm_map(
                feats_train[layer],
                train_y,
                feats_test[layer],
                test_y,
                seed=ctx.cfg.seed,
                progress=False,
            )
            record(layer, "svm", "mAP", res["mAP"], dims=int(feats_train[layer].shape[1]))
        return records
    probes = linear_probes(
        {layer: (feats_train[layer], feats_test[layer]) for layer in pc.layers},
        train_y,
        test_y,
        desc=f"linear probes: {m.name}",
        **linear_protocol(ctx),
    )
    for layer, res in probes.items():
        extra = {k: v for k, v in res.items() if k not in ("top1", "top5")}
        extra["dims"] = int(feats_train[layer].shape[1])
        for metric in ("top1", "top5"):
            record(layer, "linear", metric, res[metric], **extra)
    if pc.knn:
        res = knn_accuracy(
            l2_normalize(feats_train["pool"]), train_y, l2_normalize(feats_test["pool"]), test_y
        )
        record("pool", "knn", "top1", res["top1"], k=20)
    for layer in pc.lowshot_layers if pc.lowshot_shots else []:
        res = lowshot_eval(
            feats_train[layer],
            train_y,
            feats_test[layer],
            test_y,
            shots=tuple(pc.lowshot_shots),
            n_draws=pc.lowshot_draws,
            seed=ctx.cfg.seed,
            progress=False,
        )
        for row in res["results"]:
            record(layer, "lowshot", "top1", row["mean"], std=row["std"], draws=row["top1"])
            records[-1]["shots"] = int(row["shots"])
    return records


def run(ctx: Context) -> dict[str, Any]:
    """Probe every network on every target (or skip: done already). Returns the stage's meta."""
    cfg, st = ctx.cfg, stage(ctx)
    if (meta := up_to_date(ctx, st)) is not None:
        return meta
    models = probed(ctx)
    for m in models:
        m.stage.require(m.command)
    loaded = targets(ctx)
    start(st)
    cells = ctx.run_dir / CELLS
    settings = _probe_settings(ctx)
    records: list[dict[str, Any]] = []
    spare: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    for m in models:
        net = None
        made_with = settings_digest(ctx, m)
        for target, data in loaded:
            train, train_y, test, test_y = data
            content = target_fingerprint(data)
            key = fingerprint(
                {
                    "model": model_fingerprint(m),
                    "target": asdict(target),
                    "data": content,
                    "probe": settings,
                }
            )
            path = cells / f"{m.name}-{target.name}-{key[:16]}.json"
            if path.is_file():
                records.extend({**r, "settings": made_with} for r in read_json(path))
                continue
            if net is None or m.kind == "random":
                net = load_net(ctx, m)
            if m.kind == "random":
                net = random_floor(ctx, net, train)
            ctx.say(f"{st.name}: {m.name} on {target.name} ({len(train)} train / {len(test)} test)")
            cell = probe_cell(ctx, net, m, target, train, train_y, test, test_y, spare)
            write_json(path, cell)
            records.extend({**r, "settings": made_with} for r in cell)
    write_json(st.dir / "results.json", {"run": cfg.name, "records": records})
    return finish(st, {"n_records": len(records), "table": table_rows(records)})


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target and layer, ``{target, layer, <model>: value}``: linear-probe top-1, or the SVM
    mAP of a multi-label target (what the CLI prints)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if (r["protocol"], r["metric"]) not in (("linear", "top1"), ("svm", "mAP")):
            continue
        key = (r["target"], r["layer"])
        row = rows.setdefault(key, {"target": r["target"], "layer": r["layer"]})
        row[r["model"]] = round(r["value"], 2)
    return list(rows.values())


def format_table(records: list[dict[str, Any]]) -> str:
    """The N_pre / N_cf table: per target and layer the linear-probe top-1 (%) (SVM mAP for a
    multi-label target), then kNN and low-shot rows when present."""
    models = [m for m in MODEL_ORDER if any(r["model"] == m for r in records)]
    models += sorted({r["model"] for r in records} - set(models))

    def line(label: str, values: dict[str, float]) -> str:
        cells = "".join(f"{values[m]:>10.2f}" if m in values else f"{'-':>10}" for m in models)
        return f"  {label:<12}{cells}"

    lines = []
    for target in dict.fromkeys(r["target"] for r in records):
        mine = [r for r in records if r["target"] == target]
        what = "SVM mAP" if any(r["protocol"] == "svm" for r in mine) else "linear probe top-1"
        lines.append(f"{what} (%) on {target} (test split)")
        lines.append("  " + f"{'layer':<12}" + "".join(f"{m:>10}" for m in models))
        for row in table_rows(mine):
            lines.append(line(row["layer"], row))
        extra: dict[str, dict[str, float]] = {}
        for r in mine:
            if r["protocol"] == "knn":
                extra.setdefault("kNN pool", {})[r["model"]] = r["value"]
            elif r["protocol"] == "lowshot":
                extra.setdefault(f"{r['shots']}-shot {r['layer']}", {})[r["model"]] = r["value"]
        lines.extend(line(label, values) for label, values in extra.items())
    return "\n".join(lines)
