"""Stage 2: N_pre's features of every item of D_cf (paper §3.1).

One layer (``extract.layer``: ``pool`` = the penultimate, average-pooled res5 output, or a named
layer, global-average-pooled over every spatial and temporal dimension), optionally
L2-normalised, written by item index into ``features/<layer>.npy`` (an N x D float32 ``.npy``
that later stages open as a memmap). For a video set (§4.1.2) an item is a video and its feature
is the mean of the features of its ``clips_per_video`` uniformly spaced clips, L2-normalised after
averaging. Under ``torchrun`` each rank computes its block of rows. An interrupted extraction
resumes from the last block it flushed.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit import distributed as dist
from clusterfit.artifacts import Stage, atomic_write, write_text
from clusterfit.data import VideoSet, center_crop, to_float
from clusterfit.features import compute_features
from clusterfit.models.net import global_pool
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
    return Stage(ctx.run_dir, folder(task), asdict(ctx.cfg.extract), inputs)


def features_path(st: Stage, layer: str) -> Path:
    return st.dir / f"{layer}.npy"


def _new_features(path: Path, shape: tuple[int, int]) -> None:
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()


def _usable(path: Path, shape: tuple[int, int]) -> bool:
    """True when ``path`` is a float32 ``.npy`` of ``shape`` (a resumable features file); a file
    that cannot be read is reported and made anew."""
    if not path.exists():
        return False
    try:
        f = np.load(path, mmap_mode="r")
        ok = f.shape == shape and f.dtype == np.float32
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
    path = features_path(st, layer)
    rank = dist.get_rank()
    done_file = st.dir / f".rows_done.rank{rank}"
    shape = (len(data), int(dim))
    if dist.is_main_process() and not _usable(path, shape):
        resuming = False
        atomic_write(path, lambda tmp: _new_features(tmp, shape))
    dist.barrier()
    out = np.load(path, mmap_mode="r+")
    mine = dist.shard(len(data))
    done = _rows_done(done_file, mine) if resuming else mine.start
    ctx.say(f"{st.name}: N_pre features at '{layer}' ({dim}-d) of {len(data)} images")

    def sink(_layer: str, block: range, array: np.ndarray) -> None:
        out[block.start : block.stop] = array
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
    )
    out.flush()
    dist.barrier()
    if dist.is_main_process():
        for f in st.dir.glob(".rows_done.rank*"):
            f.unlink()
    summary = {"layer": layer, "n_items": len(data), "dim": int(dim)}
    if isinstance(data, VideoSet):
        summary["video"] = data.summary
    return finish(st, summary)
