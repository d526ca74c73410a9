"""Training throughput of the engine against a bare forward/backward/step loop.

Both sides train the same freshly initialised model (same seed) on the same images with the same
batch size, optimiser and thread count, in the same process; the bare loop gets its batches
pre-augmented in memory, so it measures only the model. The ratio engine / bare is the share of the
machine the engine's own work (indexing, augmentation, bookkeeping, checkpoints, logs) leaves to
the model. Median of ``--repeats`` alternating runs.

    python benchmarks/train_throughput.py   # writes benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clusterfit.config import TrainConfig
from clusterfit.data import BatchAugment, ImageSet, load_images
from clusterfit.models import create_model
from clusterfit.train import Trainer


def make_net(arch_kwargs: dict, in_chans: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_cifar", [10], in_chans=in_chans, **arch_kwargs)


def engine_run(images: ImageSet, cfg: TrainConfig, arch_kwargs: dict) -> float:
    """Images per second of ``Trainer.fit`` (checkpoint and log every epoch included)."""
    net = make_net(arch_kwargs, images.images.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(net, images, [images.labels], cfg, Path(tmp), progress=False)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    return cfg.epochs * (len(images) // cfg.batch_size) * cfg.batch_size / seconds


def bare_run(images: ImageSet, cfg: TrainConfig, arch_kwargs: dict) -> float:
    """Images per second of a plain loop over pre-augmented batches in memory."""
    net = make_net(arch_kwargs, images.images.shape[1]).train()
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    aug = BatchAugment(crop_padding=images.images.shape[-1] // 8, flip=True)
    gen = torch.Generator().manual_seed(0)
    labels = torch.as_tensor(images.labels)
    steps = len(images) // cfg.batch_size
    batches = []
    for i in range(steps):
        sl = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        batches.append((aug(images.images[sl], gen), labels[sl]))
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for x, y in batches:
            loss = F.cross_entropy(net(x)[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return cfg.epochs * steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = load_images("bundled", "train", limit=args.items, progress=False)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    arch = {"depth": args.depth, "width": args.width}
    engine, bare = [], []
    for _ in range(args.repeats):
        bare.append(bare_run(images, cfg, arch))
        engine.append(engine_run(images, cfg, arch))
    result = {
        "data": f"bundled Fashion-MNIST, {len(images)} images 1x28x28",
        "model": f"resnet_cifar depth {args.depth} width {args.width}",
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "threads": args.threads,
        "repeats": args.repeats,
        "engine_images_per_s": [round(v, 1) for v in engine],
        "bare_images_per_s": [round(v, 1) for v in bare],
        "engine_median": round(statistics.median(engine), 1),
        "bare_median": round(statistics.median(bare), 1),
        "ratio_of_medians": round(statistics.median(engine) / statistics.median(bare), 3),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
