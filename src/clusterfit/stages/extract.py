"""Stage 2: N_pre's features of every item of D_cf (paper §3.1).

One layer (``extract.layer``: ``pool`` = the penultimate, average-pooled res5 output, or a named
layer, global-average-pooled over every spatial and temporal dimension), optionally
L2-normalised, written by item index into ``features/<layer>.npy`` (an N x D float32 ``.npy``
that later stages open as a memmap). For a video set (§4.1.2) an item is a video and its feature
is the mean of the features of its ``clips_per_video`` uniformly spaced clips, L2-normalised after
averaging. Under ``torchrun`` each rank computes its block of rows. An interrupted extraction
resumes from the last block it flushed.

At scale: ``extract.precision`` runs the forward pass under fp16 / bf16 autocast (features are
pooled and normalised in float32); ``extract.dtype=float16`` stores them in half the space;
``extract.sharded`` has each rank write its own file ``<layer>.<rank>-of-<world>.npy``. Every
extraction writes ``<layer>.manifest.json`` (shape, dtype, files and their rows), which
:func:`open_features` reads: one ``.npy`` memmap, or a :class:`~clusterfit.sharded.ShardedArray`
that k-means streams rank by rank without a gather.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit import distributed as dist
from clusterfit.artifacts import Stage, atomic_write, write_json, write_text
from clusterfit.data import VideoSet, center_crop, to_float
from clusterfit.errors import ClusterFitError
from clusterfit.features import compute_features
from clusterfit.models.net import global_pool
from clusterfit.sharded import MANIFEST_SUFFIX, ShardedArray, manifest, shard_name
from clusterfit.stages import graph, pretrain
from clusterfit.stages.context import Context, each_task, finish, start, up_to_date
from clusterfit.train.engine import CHECKPOINT

NAME = "features"


def folder(task: int) -> str:
    """``features`` for N_pre, ``features-<n>`` for the n-th N_pre of a multi-task run."""
    return graph.folder("extract", task=task)


@graph.memo("extract")
def stage(ctx: Context, task: int = 0) -> Stage:
    """The extract stage of the ``task``-th N_pre: its config, N_pre's and the data's prints."""
    pre = pretrain.stage(ctx, task)
    inputs = {"pretrain": pre.fingerprint, "data": ctx.data().fingerprint}
    config = asdict(ctx.cfg.extract)
    for key, default in _LATER_KEYS.items():  # at their defaults, earlier runs stay up to date
        if config[key] == default:
            del config[key]
    return Stage(ctx.run_dir, folder(task), config, inputs)


#: Settings added after the first release, with the values that earlier runs had.
_LATER_KEYS = {"precision": "float32", "dtype": "float32", "sharded": False}
_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def features_path(st: Stage, layer: str) -> Path:
    """The single features file ``<layer>.npy`` (unsharded extraction)."""
    return st.dir / f"{layer}.npy"


def manifest_path(st: Stage, layer: str) -> Path:
    """``<layer>.manifest.json``: shape, dtype and the files holding the rows."""
    return st.dir / f"{layer}{MANIFEST_SUFFIX}"


def open_features(st: Stage, layer: str) -> np.ndarray | ShardedArray:
    """The N x D features of a finished extraction, read-only: the ``.npy`` memmap, or the
    :class:`ShardedArray` over the rank files its manifest lists (float32 or float16)."""
    path = manifest_path(st, layer)
    if path.is_file():
        m = read_manifest(path)
        if len(m["shards"]) != 1 or m["shards"][0]["file"] != features_path(st, layer).name:
            return ShardedArray.open(path)
    return np.load(features_path(st, layer), mmap_mode="r")


def read_manifest(path: Path) -> dict[str, Any]:
    """A features manifest (see :mod:`clusterfit.sharded`)."""
    return json.loads(path.read_text())


def _new_features(path: Path, shape: tuple[int, int], dtype: str) -> None:
    np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape).flush()


def _usable(path: Path, shape: tuple[int, int], dtype: str = "float32") -> bool:
    """True when ``path`` is a ``.npy`` of ``shape`` and ``dtype`` (a resumable features file);
    a file that cannot be read is reported and made anew."""
    if not path.exists():
        return False
    try:
        f = np.load(path, mmap_mode="r")
        ok = f.shape == shape and f.dtype == np.dtype(dtype)
    except (OSError, ValueError) as e:
        ok = False
        warnings.warn(f"{path} cannot be read ({e}); extracting again", stacklevel=2)
    return ok


def _rows_done(done_file: Path, mine: range) -> int:
    """Where an interrupted extraction of rows ``mine`` stopped; its start when the resume state
    is absent or cannot be read (reported: those rows are extracted again)."""
    if not done_file.is_file():
        return mine.start
    text = done_file.read_text().strip()
    if text.isdigit() and mine.start <= int(text) <= mine.stop:
        return int(text)
    warnings.warn(
        f"resume state {done_file} is unreadable ({text[:20]!r}); extracting rows "
        f"{mine.start}..{mine.stop} again",
        stacklevel=2,
    )
    return mine.start


def run(ctx: Context) -> dict[str, Any]:
    """Extract the features of every N_pre; returns the (first) N_pre's extract meta."""
    return each_task(ctx, run_task)


def run_task(ctx: Context, task: int = 0) -> dict[str, Any]:
    """Extract the ``task``-th N_pre's features of D_cf (or skip: done already)."""
    cfg, st = ctx.cfg, stage(ctx, task)
    if (meta := up_to_date(ctx, st)) is not None:
        return meta
    pre = pretrain.stage(ctx, task)
    pre.require("pretrain")
    net = ctx.load_model(pre.dir / CHECKPOINT)
    layer, data = cfg.extract.layer, ctx.data()
    probe_x = to_float(center_crop(data.images[:2], data.crop_size)).to(ctx.device)
    with torch.no_grad():
        dim = global_pool(net.to(ctx.device).eval().intermediates(probe_x, [layer])[layer]).shape[1]
    resuming = start(st)
    ex = cfg.extract
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = dist.shard(len(data))
    shape = (len(data), int(dim))
    if ex.sharded:  # each rank its own file of its rows
        path = st.dir / shard_name(layer, rank, world)
        done_file = st.dir / f".rows_done.{path.stem}"
        first = mine.start
        if len(mine) and not _usable(path, (len(mine), shape[1]), ex.dtype):
            resuming = False
            atomic_write(path, lambda tmp: _new_features(tmp, (len(mine), shape[1]), ex.dtype))
    else:  # one file, each rank writing its rows
        path = features_path(st, layer)
        done_file = st.dir / f".rows_done.rank{rank}"
        first = 0
        remade = torch.zeros(1)
        if dist.is_main_process() and not _usable(path, shape, ex.dtype):
            remade[0] = 1
            atomic_write(path, lambda tmp: _new_features(tmp, shape, ex.dtype))
        if dist.broadcast(remade)[0] > 0:  # every rank starts again on a new file
            resuming = False
    dist.barrier()
    out = np.load(path, mmap_mode="r+") if len(mine) or not ex.sharded else None
    done = _rows_done(done_file, mine) if resuming else mine.start
    stored = "" if ex.dtype == "float32" else f", stored as {ex.dtype}"
    ctx.say(f"{st.name}: N_pre features at '{layer}' ({dim}-d) of {len(data)} images{stored}")

    def sink(_layer: str, block: range, array: np.ndarray) -> None:
        assert out is not None
        if ex.dtype == "float16" and np.abs(array).max(initial=0.0) > _FLOAT16_MAX:
            raise ClusterFitError(
                f"extract.dtype=float16: features at '{layer}' exceed the float16 range "
                f"(|x| up to {np.abs(array).max():.3g}); set extract.normalize=true or "
                "extract.dtype=float32"
            )
        out[block.start - first : block.stop - first] = array
        if (block.stop - mine.start) % (
            16 * cfg.extract.batch_size
        ) == 0 or block.stop == mine.stop:
            out.flush()
            write_text(done_file, str(block.stop))

    compute_features(
        net,
        data,
        [layer],
        normalize=cfg.extract.normalize,
        batch_size=cfg.extract.batch_size,
        device=ctx.device,
        rows=range(done, mine.stop),
        sink=sink,
        progress=ctx.progress,
        desc="extract",
        precision=_PRECISIONS[ex.precision],
    )
    if out is not None:
        out.flush()
    dist.barrier()
    if dist.is_main_process():
        for f in st.dir.glob(".rows_done.*"):
            f.unlink()
        if ex.sharded:
            blocks = [dist.shard(len(data), r, world) for r in range(world)]
            shards = [(shard_name(layer, r, world), b.start, b.stop) for r, b in enumerate(blocks)]
            shards = [s for s in shards if s[2] > s[1]]
            listed = {s[0] for s in shards}
            for f in st.dir.glob(f"{layer}.*-of-*.npy"):  # left by an attempt on other ranks
                if f.name not in listed:
                    f.unlink()
        else:
            shards = [(path.name, 0, len(data))]
        facts = {"layer": layer, "normalized": ex.normalize, "precision": ex.precision}
        write_json(manifest_path(st, layer), manifest(shape, ex.dtype, shards, **facts))
    summary = {"layer": layer, "n_items": len(data), "dim": int(dim)}
    if isinstance(data, VideoSet):
        summary["video"] = data.summary
    return finish(st, summary)
