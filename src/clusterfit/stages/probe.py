"""Stage 5: linear probes on frozen features of several layers, N_pre against N_cf (paper App. D).

For every network (a randomly initialised one of N_pre's architecture as the floor, N_pre, N_cf),
every target (a labelled train and test split) and every layer of ``probe.layers``: features of the
target's images, average-pooled to at most ``probe.max_dims`` dimensions (the paper's ~9k), a
linear classifier trained on the train split (its learning rate chosen on a validation split carved
from it), top-1 / top-5 on the test split; and a kNN (cosine, k=20) on the pooled penultimate
features as a second opinion. Each (network, target) is a cell cached under ``probe_cells/``, so a
change that touches only N_cf reprobes only N_cf. Writes ``probe/results.json``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit.artifacts import Stage, fingerprint, read_json, write_json
from clusterfit.config import TargetConfig
from clusterfit.data import ImageSet, load_images
from clusterfit.errors import DataError
from clusterfit.evaluate import knn_accuracy, linear_probe, pool_to_dims
from clusterfit.models import Net, build_from_args, load_model
from clusterfit.stages import baselines, cluster, fit, pretrain
from clusterfit.stages.context import Context, finish, start
from clusterfit.stages.extract import compute_features
from clusterfit.train.engine import CHECKPOINT

NAME = "probe"
CELLS = "probe_cells"  # beside probe/, so that a redone probe stage keeps the finished cells
MODEL_ORDER = ("random", "N_pre", "N_pre_2", "N_pre_3", "N_pre_2x", "distill", "N_cf")


def _probe_settings(ctx: Context) -> dict[str, Any]:
    p = asdict(ctx.cfg.probe)
    p.pop("targets")
    p.pop("random_baseline")
    return {**p, "seed": ctx.cfg.seed}


def _models(ctx: Context) -> dict[str, str]:
    """``{model name: fingerprint}`` of the networks to probe."""
    out = {}
    if ctx.cfg.probe.random_baseline:
        out["random"] = fingerprint({"random_init_of": pretrain.stage(ctx).fingerprint})
    for task in range(len(ctx.pretrain_configs)):
        out[pretrain.model_name(task)] = pretrain.stage(ctx, task).fingerprint
    out["N_cf"] = fit.stage(ctx).fingerprint
    for key in baselines.enabled(ctx):
        out[baselines.MODELS[key]] = baselines.stage(ctx, key).fingerprint
    return out


def stage(ctx: Context) -> Stage:
    """The probe stage: its settings, the targets and the probed networks' fingerprints."""
    config = {
        "probe": _probe_settings(ctx),
        "targets": [asdict(t) for t in ctx.cfg.probe.targets],
    }
    return Stage(ctx.run_dir, ctx.folder(NAME), config, _models(ctx))


def _checkpoint(ctx: Context, name: str) -> Path:
    """Where the probed network ``name`` was saved."""
    if name == "N_cf":
        st = fit.stage(ctx)
        st.require("fit")
        return st.dir / CHECKPOINT
    for key, model in baselines.MODELS.items():
        if name == model:
            st = baselines.stage(ctx, key)
            st.require("baselines")
            return st.dir / CHECKPOINT
    task = 0 if name in ("N_pre", "random") else int(name.rsplit("_", 1)[1]) - 1
    st = pretrain.stage(ctx, task)
    st.require("pretrain")
    return st.dir / CHECKPOINT


def _load_net(ctx: Context, name: str) -> Net:
    net = load_model(_checkpoint(ctx, name))
    if name != "random":
        return net
    torch.manual_seed(ctx.cfg.seed + 2)
    return build_from_args(net.model_args)


def load_target(t: TargetConfig, seed: int, progress: bool) -> tuple[ImageSet, ImageSet]:
    """A target's labelled train and test splits."""
    train = load_images(
        t.source,
        t.train_split,
        image_size=t.image_size,
        limit=t.limit,
        seed=seed,
        progress=progress,
    )
    test = load_images(
        t.source,
        t.test_split,
        image_size=t.image_size,
        limit=t.test_limit,
        seed=seed,
        progress=progress,
    )
    for split, images in (("train", train), ("test", test)):
        if not images.has_labels or (images.labels < 0).any():
            raise DataError(
                f"probe target '{t.name}': its {split} split ({images.source}) needs a label for "
                "every image (one sub-folder per class, or a CSV label column)"
            )
    return train, test


def _n_clusters(ctx: Context) -> int:
    """K as the cluster stage made it (prototype clustering makes one per class)."""
    meta = cluster.stage(ctx).meta() or {}
    return int(meta.get("summary", {}).get("k", ctx.cfg.cluster.k))


def _context_fields(ctx: Context, model: str) -> dict[str, Any]:
    """The facts a report groups by: K (N_cf only), N_pre's objective and label noise, seed."""
    task = (
        int(model.rsplit("_", 1)[1]) - 1
        if model.startswith("N_pre_") and model[-1].isdigit()
        else 0
    )
    p = ctx.pretrain_configs[task]
    return {
        "k": _n_clusters(ctx) if model == "N_cf" else None,
        "label_noise": p.label_noise if p.objective == "supervised" else None,
        "objective": p.objective,
        "seed": ctx.cfg.seed,
        "shots": None,
    }


def probe_cell(
    ctx: Context, net: Net, model: str, target: TargetConfig, train: ImageSet, test: ImageSet
) -> list[dict[str, Any]]:
    """All probes of one network on one target: a linear probe per layer, and kNN on ``pool``."""
    pc = ctx.cfg.probe
    layers = list(dict.fromkeys([*pc.layers, "pool"] if pc.knn else pc.layers))
    pool = functools.partial(pool_to_dims, max_dims=pc.max_dims)
    common = {"batch_size": pc.batch_size, "device": ctx.device, "progress": ctx.progress}
    feats_train = compute_features(net, train, layers, pool=pool, desc=f"{model} train", **common)
    feats_test = compute_features(net, test, layers, pool=pool, desc=f"{model} test", **common)
    assert feats_train is not None and feats_test is not None
    base = {"model": model, "target": target.name, **_context_fields(ctx, model)}
    records = []
    for layer in pc.layers:
        res = linear_probe(
            feats_train[layer],
            train.labels,
            feats_test[layer],
            test.labels,
            lrs=tuple(pc.lrs),
            n_updates=pc.n_updates,
            batch_size=pc.batch_size,
            seed=ctx.cfg.seed,
            device=ctx.device,
            progress=False,
        )
        extra = {k: v for k, v in res.items() if k not in ("top1", "top5")}
        extra["dims"] = int(feats_train[layer].shape[1])
        for metric in ("top1", "top5"):
            records.append(
                {
                    **base,
                    "layer": layer,
                    "protocol": "linear",
                    "metric": metric,
                    "value": float(res[metric]),
                    "extra": extra,
                }
            )
    if pc.knn:
        res = knn_accuracy(
            _l2(feats_train["pool"]), train.labels, _l2(feats_test["pool"]), test.labels
        )
        records.append(
            {
                **base,
                "layer": "pool",
                "protocol": "knn",
                "metric": "top1",
                "value": float(res["top1"]),
                "extra": {"k": 20},
            }
        )
    return records


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run(ctx: Context) -> dict[str, Any]:
    """Probe every network on every target (or skip: done already). Returns the stage's meta."""
    cfg, st = ctx.cfg, stage(ctx)
    if st.is_complete():
        ctx.say(f"{st.name}: up to date, skipped ({st.dir})")
        return st.meta() or {}
    for model in _models(ctx):
        _checkpoint(ctx, model)
    targets = [(t, *load_target(t, cfg.seed, ctx.progress)) for t in cfg.probe.targets]
    start(st)
    cells = ctx.run_dir / CELLS
    settings = _probe_settings(ctx)
    records: list[dict[str, Any]] = []
    for model, model_fp in _models(ctx).items():
        net = None
        for target, train, test in targets:
            key = fingerprint({"model": model_fp, "target": asdict(target), "probe": settings})
            path = cells / f"{model}-{target.name}-{key[:16]}.json"
            if path.is_file():
                records.extend(read_json(path))
                continue
            if net is None:
                net = _load_net(ctx, model)
            ctx.say(f"{st.name}: {model} on {target.name} ({len(train)} train / {len(test)} test)")
            cell = probe_cell(ctx, net, model, target, train, test)
            write_json(path, cell)
            records.extend(cell)
    write_json(st.dir / "results.json", {"run": cfg.name, "records": records})
    return finish(st, {"n_records": len(records), "table": table_rows(records)})


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Linear top-1 as rows ``{target, layer, <model>: value, ...}`` (what the CLI prints)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r["protocol"] != "linear" or r["metric"] != "top1":
            continue
        row = rows.setdefault(
            (r["target"], r["layer"]), {"target": r["target"], "layer": r["layer"]}
        )
        row[r["model"]] = round(r["value"], 2)
    return list(rows.values())


def format_table(records: list[dict[str, Any]]) -> str:
    """The N_pre / N_cf table: linear-probe top-1 (%) per target and layer, kNN below."""
    models = [m for m in MODEL_ORDER if any(r["model"] == m for r in records)]
    models += sorted({r["model"] for r in records} - set(models))
    lines = []
    for target in dict.fromkeys(r["target"] for r in records):
        lines.append(f"linear probe top-1 (%) on {target} (test split)")
        lines.append("  " + f"{'layer':<8}" + "".join(f"{m:>10}" for m in models))
        for row in table_rows([r for r in records if r["target"] == target]):
            cells = "".join(f"{row[m]:>10.2f}" if m in row else f"{'-':>10}" for m in models)
            lines.append(f"  {row['layer']:<8}{cells}")
        knn = {
            r["model"]: r["value"]
            for r in records
            if r["target"] == target and r["protocol"] == "knn"
        }
        if knn:
            cells = "".join(f"{knn[m]:>10.2f}" if m in knn else f"{'-':>10}" for m in models)
            lines.append(f"  {'kNN pool':<8}{cells}")
    return "\n".join(lines)
