"""The one training loop: N_pre, N_cf and the baselines all train here.

Classification with one or more heads (the loss is the sum over heads, paper App. E for several),
SGD with momentum and weight decay, cosine or step schedules with linear warm-up, bfloat16 autocast
on GPU, DistributedDataParallel under ``torchrun``, a checkpoint every epoch with exact resume, a
``log.jsonl`` row per epoch, TensorBoard scalars and a progress bar.

Data is one uint8 tensor (``ImageSet.images``, N x C x H x W, usually over the memory-mapped
decoded cache); each step gathers a batch by index (reading only those rows) and augments it as a
tensor, so the cores are spent on the model rather than on decoding. Augmentation: with the set's
``crop_size`` a random resized crop to that size + flip, else a padded random crop + flip at the
image's own size; then optional colour jitter (``color_jitter``). Without ``augment`` the centre
crop (or the whole image).

Exact resume: the order of items and the augmentation of epoch ``e`` depend only on
``(seed, e, rank)``, the learning rate only on the step, and the checkpoint written at the end of
each epoch holds the weights, buffers and optimizer state. A run killed and resumed therefore ends
with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clusterfit import distributed as dist
from clusterfit.artifacts import write_text
from clusterfit.config import TrainConfig
from clusterfit.data import (
    BatchAugment,
    ClipCropFlip,
    ColorJitterBatch,
    ImageSet,
    RandomResizedCropBatch,
    center_crop,
    to_float,
)
from clusterfit.models import Net, load_checkpoint, save_checkpoint
from clusterfit.models.net import channels_last_is_safe

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"

LossFn = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based): linear warm-up, then cosine decay
    to zero or steps of ``gamma`` at the ``milestones`` (fractions of the epochs)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(step >= round(m * total) for m in cfg.milestones)
    return cfg.lr * (cfg.gamma**passed)


def summed_cross_entropy(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy of each head (multi-task ClusterFit, App. E)."""
    return sum(
        (F.cross_entropy(lg.float(), t) for lg, t in zip(logits, targets, strict=True)),
        start=torch.zeros((), device=logits[0].device),
    )


def _epoch_seed(seed: int, epoch: int, salt: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1)


def _batches(n: int, batch_size: int, epoch_gen: torch.Generator) -> list[torch.Tensor]:
    """The epoch's global batches of item indices (the last, short one dropped when N > batch)."""
    perm = torch.randperm(n, generator=epoch_gen)
    if n <= batch_size:
        return [perm]
    return list(perm[: (n // batch_size) * batch_size].split(batch_size))


class Trainer:
    """Trains ``net`` on ``images`` with per-item ``targets`` (one array per head).

    Args:
        net: the network; its heads must match the targets (or what ``make_batch`` produces).
        images: the training set (uint8, in memory).
        targets: per head, an int64 array of N item targets; empty when ``make_batch`` makes the
            targets itself (RotNet, Jigsaw).
        cfg: the SGD recipe.
        out_dir: where ``checkpoint.pt``, ``log.jsonl`` and ``tb/`` go.
        make_batch: ``(x float B x C x H x W in [0,1], targets, generator) -> (input, targets)``;
            the identity by default (a pretext objective's ``make_batch`` otherwise).
        loss_fn: ``(logits per head, targets per head) -> scalar``; summed cross-entropy by default.
        teacher: for distillation, a frozen network whose logits go to ``loss_fn`` as a third
            argument ``(logits, targets, teacher_logits)``.
        seed: seeds the item order and the augmentation of every epoch.
        device: where the model trains.
        checkpoint_extra: JSON-able facts stored in every checkpoint (e.g. the run config).
    """

    def __init__(
        self,
        net: Net,
        images: ImageSet,
        targets: list[np.ndarray],
        cfg: TrainConfig,
        out_dir: Path,
        *,
        make_batch: Callable[..., tuple[torch.Tensor, list[torch.Tensor]]] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        teacher: Net | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = True,
        desc: str = "train",
        checkpoint_extra: dict[str, Any] | None = None,
    ) -> None:
        self.net = net
        self.images = images
        self.targets = [torch.as_tensor(np.asarray(t), dtype=torch.long) for t in targets]
        for t in self.targets:
            if t.shape[0] != len(images):
                raise ValueError(f"targets have {t.shape[0]} items, images {len(images)}")
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.make_batch = make_batch
        self.loss_fn = loss_fn or summed_cross_entropy
        self.teacher = teacher
        self.seed = seed
        self.device = torch.device(device)
        self.progress = progress and dist.is_main_process()
        self.desc = desc
        self.checkpoint_extra = checkpoint_extra or {}
        self.augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
        # video sets (paper §4.1.2) draw a clip at a random time of each video (temporal
        # jitter) and crop every frame of a clip with the same random window
        self.clips = getattr(images, "training_clips", None) if cfg.augment else None
        if cfg.augment and images.images.ndim == 5:
            self.augment = ClipCropFlip(images.crop_size or images.images.shape[-1], cfg.flip)
        elif cfg.augment and images.crop_size is not None:
            self.augment = RandomResizedCropBatch(images.crop_size, flip=cfg.flip)
        elif cfg.augment:
            size = images.images.shape[-1]
            padding = cfg.crop_padding if cfg.crop_padding is not None else max(1, size // 8)
            self.augment = BatchAugment(crop_padding=padding, flip=cfg.flip)
        jitter = cfg.color_jitter
        self.jitter = ColorJitterBatch(jitter) if cfg.augment and jitter > 0 else None

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def steps_per_epoch(self) -> int:
        return max(1, len(self.images) // self.cfg.batch_size)

    def fit(self) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs``, resuming from ``checkpoint.pt`` if present; returns the log."""
        cfg, net, device = self.cfg, self.net, self.device
        net.to(device)
        if cfg.channels_last and net.spatial_dims == 2 and channels_last_is_safe(net, device):
            net.channels_last()  # same results, faster convolutions (oneDNN, tensor cores)
        optimizer = torch.optim.SGD(
            net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        start_epoch, log = 0, []
        if self.checkpoint_path.is_file():
            state = load_checkpoint(self.checkpoint_path)
            net.load_state_dict(state["state_dict"])
            if "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
                start_epoch = int(state["epoch"]) + 1
                log = list(state.get("log", []))
        if self.teacher is not None:
            self.teacher.to(device).eval()
        model: nn.Module = net
        if dist.is_distributed():
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None
            )
        steps = self.steps_per_epoch()
        writer = self._tensorboard()
        bar = tqdm(
            total=cfg.epochs * steps,
            initial=start_epoch * steps,
            desc=self.desc,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for epoch in range(start_epoch, cfg.epochs):
            row = self._epoch(model, optimizer, epoch, steps, bar)
            log.append(row)
            if dist.is_main_process():
                save_checkpoint(
                    self.checkpoint_path,
                    net,
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                    log=log,
                    train_config=asdict(cfg),
                    **self.checkpoint_extra,
                )
                lines = "".join(json.dumps(r) + "\n" for r in log)
                write_text(self.out_dir / LOG, lines)
                if writer is not None:
                    for key, value in row.items():
                        if isinstance(value, int | float) and key != "epoch":
                            writer.add_scalar(f"{self.desc}/{key}", value, epoch)
                    writer.flush()
            dist.barrier()
        bar.close()
        if writer is not None:
            writer.close()
        net.eval()
        return log

    def _tensorboard(self) -> Any:
        if not dist.is_main_process():
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return None
        return SummaryWriter(log_dir=str(self.out_dir / "tb"))

    def _epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        steps: int,
        bar: tqdm,
    ) -> dict[str, Any]:
        cfg, device = self.cfg, self.device
        rank, world = dist.get_rank(), dist.get_world_size()
        order_gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, 0))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, 1 + rank))
        batches = _batches(len(self.images), cfg.batch_size, order_gen)
        model.train()
        n_heads = max(1, len(self.targets))
        totals = torch.zeros(2 + 2 * n_heads, dtype=torch.float64)  # loss*n, n, correct, count
        use_amp = cfg.amp and device.type == "cuda"
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            step = epoch * steps + i
            lr = learning_rate(cfg, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            local = batch[rank::world]
            x_u8 = self.clips(local, aug_gen) if self.clips else self.images.images[local]
            if self.augment is not None:
                x = self.augment(x_u8, aug_gen)
            else:
                x = to_float(center_crop(x_u8, self.images.crop_size))
            if self.jitter is not None:
                x = self.jitter(x, aug_gen)
            targets = [t[local] for t in self.targets]
            if self.make_batch is not None:
                x, targets = self.make_batch(x, targets, aug_gen)
            x = x.to(device, non_blocking=True)
            targets = [t.to(device, non_blocking=True) for t in targets]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
                    loss = self.loss_fn(logits, targets, teacher_logits)
                else:
                    loss = self.loss_fn(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.desc}: loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = x.shape[0]
            totals[0] += loss.item() * n
            totals[1] += n
            for h, (lg, t) in enumerate(zip(logits, targets, strict=False)):
                if t.dim() == 1:
                    totals[2 + 2 * h] += (lg.argmax(1) == t).sum().item()
                    totals[3 + 2 * h] += t.numel()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        seconds = time.perf_counter() - started
        dist.all_reduce_sum(totals)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(totals[0] / max(1.0, totals[1])),
            "lr": lr,
            "seconds": round(seconds, 3),
            "images_per_s": round(float(totals[1]) / max(seconds, 1e-9), 1),
        }
        for h in range(n_heads):
            if totals[3 + 2 * h] > 0:
                key = "train_acc" if n_heads == 1 else f"train_acc_head{h}"
                row[key] = float(100.0 * totals[2 + 2 * h] / totals[3 + 2 * h])
        return row


def train_network(
    net: Net,
    images: ImageSet,
    targets: list[np.ndarray],
    cfg: TrainConfig,
    out_dir: Path,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Shorthand for ``Trainer(net, images, targets, cfg, out_dir, **kwargs).fit()``."""
    return Trainer(net, images, targets, cfg, out_dir, **kwargs).fit()
