"""Training throughput of the engine against a bare forward/backward/step loop.

Both sides train the same freshly initialised model (same seed) on the same images with the same
batch size, optimiser and thread count, in the same process; the bare loop gets its batches
pre-augmented in memory, so it measures only the model. The ratio engine / bare is the share of the
machine the engine's own work (indexing, augmentation, bookkeeping, checkpoints, logs) leaves to
the model. Each is run in both memory layouts (contiguous and channels-last, the engine's
default), and a feature pass (extraction) too, so the channels-last speed-up is measured beside
them. Median of ``--repeats`` alternating runs.

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
from clusterfit.data import BatchAugment, ImageSet, load_images, to_float
from clusterfit.models import create_model
from clusterfit.train import Trainer


def make_net(arch_kwargs: dict, in_chans: int, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("resnet_cifar", [10], in_chans=in_chans, **arch_kwargs)
    return net.channels_last() if channels_last else net


def extract_run(images: ImageSet, arch_kwargs: dict, channels_last: bool) -> float:
    """Images per second of a feature pass (``intermediates`` at ``pool``, no gradients)."""
    net = make_net(arch_kwargs, images.images.shape[1], channels_last).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(images), 256):
            net.intermediates(to_float(images.images[lo : lo + 256]), ["pool"])
    return len(images) / (time.perf_counter() - start)


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
    """Images per second of a plain loop over pre-augmented batches in memory, in the memory
    layout the engine uses (``cfg.channels_last``)."""
    net = make_net(arch_kwargs, images.images.shape[1], cfg.channels_last).train()
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
    arch = {"depth": args.depth, "width": args.width}
    result: dict = {
        "data": f"bundled Fashion-MNIST, {len(images)} images 1x28x28",
        "model": f"resnet_cifar depth {args.depth} width {args.width}",
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved: both layouts see the same machine state
        for layout, cl in (("contiguous", False), ("channels_last", True)):
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, channels_last=cl)
            runs.setdefault(f"bare_{layout}", []).append(bare_run(images, cfg, arch))
            runs.setdefault(f"engine_{layout}", []).append(engine_run(images, cfg, arch))
            runs.setdefault(f"extract_{layout}", []).append(extract_run(images, arch, cl))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result["images_per_s"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
    result["median_images_per_s"] = {k: round(v, 1) for k, v in med.items()}
    for layout in ("contiguous", "channels_last"):
        result[f"engine_over_bare_{layout}"] = round(
            med[f"engine_{layout}"] / med[f"bare_{layout}"], 3
        )
    for what in ("engine", "bare", "extract"):
        result[f"channels_last_speedup_{what}"] = round(
            med[f"{what}_channels_last"] / med[f"{what}_contiguous"], 3
        )
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
