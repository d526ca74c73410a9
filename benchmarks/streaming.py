"""Images streamed from the memory-mapped cache: peak memory against N, and training throughput.

(a) ``clusterfit run`` on generated folders of 4,000 and 40,000 64 x 64 JPEGs (10 class folders,
    plus a 1,000-image ``test`` split used as the probe target), with the same tiny settings and a
    fresh image cache (so decoding is included). The peak of the *anonymous* memory of the process
    tree (the run and its DataLoader decode workers), sampled from ``/proc/<pid>/smaps_rollup``
    every 0.2 s, is compared: the 40k folder's pixels are ~490 MB, the goal is a difference of at
    most 200 MB.
(b) Training throughput at 32 px: one ``Trainer`` epoch over the 4k folder cached at
    ``image_size=32``, once from the memory-mapped cache and once from the same pixels copied into
    an in-memory tensor (the old layout), alternately, three times each; the goal is a ratio
    (mapped / in memory) of at least 0.9. Also the same for the batch gathering + augmentation
    alone (no model), where a difference would show most.

Generated data stays under ``--data-dir`` (default /tmp/clusterfit-streaming) between runs.
Figures go to ``benchmarks/results/streaming.json``.

    python benchmarks/streaming.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "streaming.json"
CLASSES = 10


def _write_block(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, seed = args
    rng = np.random.default_rng(seed + start)
    for i in range(start, stop):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((64, 64), Image.Resampling.BILINEAR)
        img.save(Path(folder) / f"c{i % CLASSES}" / f"{i:06d}.jpg", quality=90)


def make_folder(root: Path, n: int, seed: int) -> Path:
    """``root/c0..c9/<i>.jpg``: n smooth random 64 x 64 colour JPEGs (made once, then kept)."""
    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True)
    blocks = [(str(root), a, min(n, a + 1000), seed) for a in range(0, n, 1000)]
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_block, blocks)
    done.write_text(str(n))
    return root


def make_dataset(base: Path, n: int) -> Path:
    """``base/train`` (n images) and ``base/test`` (1,000 images)."""
    make_folder(base / "train", n, seed=1)
    make_folder(base / "test", 1000, seed=2)
    return base


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def run_with_peak(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; peak of the summed anonymous memory of its process tree, wall time."""
    peak = {"kib": 0, "procs": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree(proc.pid)
            total = sum(_anon_kib(p) for p in pids)
            if total > peak["kib"]:
                peak["kib"], peak["procs"] = total, len(pids)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {
        "peak_anon_mb": round(peak["kib"] * 1024 / 1e6, 1),
        "procs_at_peak": peak["procs"],
        "wall_seconds": round(wall, 1),
    }


TINY = [
    "data.split=train",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=256",
    "pretrain.arch_kwargs={depth: 10, width: 8}",
    "fit.train.epochs=1",
    "cluster.k=10",
    "cluster.n_iter=5",
    "probe.layers=[res5]",
    "probe.targets.0.name=jpegs",
    "probe.targets.0.limit=500",
    "probe.targets.0.test_limit=200",
    "probe.n_updates=50",
    "probe.lrs=[0.01]",
    "probe.random_baseline=false",
    "progress=false",
]


def memory_runs(data_dir: Path, sizes: list[int]) -> dict:
    out = {}
    for n in sizes:
        base = make_dataset(data_dir / f"jpeg{n // 1000}k", n)
        with tempfile.TemporaryDirectory(prefix="clusterfit-streaming-") as tmp:
            env = {**os.environ, "CLUSTERFIT_CACHE": str(Path(tmp) / "cache")}
            cmd = [
                sys.executable,
                "-m",
                "clusterfit.cli",
                "run",
                f"data.source={base}",
                f"probe.targets.0.source={base}",
                *TINY,
                f"out_dir={Path(tmp) / 'runs'}",
            ]
            res = run_with_peak(cmd, env)
        res["pixels_mb"] = round(n * 3 * 64 * 64 / 1e6, 1)
        out[str(n)] = res
        print(f"clusterfit run, {n} images: {res}", flush=True)
    return out


def throughput(data_dir: Path, n: int, repeats: int) -> dict:
    import torch

    from clusterfit.config import TrainConfig
    from clusterfit.data import BatchAugment, ImageSet, load_images
    from clusterfit.models import create_model
    from clusterfit.train.engine import Trainer

    base = make_dataset(data_dir / f"jpeg{n // 1000}k", n)
    cache = data_dir / "cache"
    mapped = load_images(base / "train", image_size=32, cache_dir=cache, progress=False)
    in_memory = ImageSet(
        images=mapped.images.clone(),
        labels=mapped.labels,
        classes=mapped.classes,
        source="in memory",
        fingerprint=mapped.fingerprint,
    )
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    sets = {"mapped": mapped, "in_memory": in_memory}
    train: dict[str, list[float]] = {k: [] for k in sets}
    gather: dict[str, list[float]] = {k: [] for k in sets}
    aug = BatchAugment(crop_padding=4)
    for _ in range(repeats):
        for name, ds in sets.items():
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for batch in torch.randperm(len(ds), generator=gen).split(128):
                aug(ds.images[batch], gen)
            gather[name].append(len(ds) / (time.perf_counter() - t0))
            torch.manual_seed(0)
            net = create_model("resnet_cifar", [len(ds.classes)], in_chans=3, depth=10, width=16)
            with tempfile.TemporaryDirectory() as tmp:
                log = Trainer(net, ds, [ds.labels], cfg, Path(tmp), progress=False).fit()
            train[name].append(log[-1]["images_per_s"])
    med = {k: float(np.median(v)) for k, v in train.items()}
    gmed = {k: float(np.median(v)) for k, v in gather.items()}
    res = {
        "images": n,
        "image_size": 32,
        "repeats": repeats,
        "train_img_per_s": {k: [round(x, 1) for x in v] for k, v in train.items()},
        "gather_augment_img_per_s": {k: [round(x) for x in v] for k, v in gather.items()},
        "train_ratio": round(med["mapped"] / med["in_memory"], 3),
        "gather_ratio": round(gmed["mapped"] / gmed["in_memory"], 3),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"throughput at 32 px: {res}", flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/clusterfit-streaming"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[4000, 40000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if not args.skip_memory:
        runs = memory_runs(args.data_dir, args.sizes)
        lo, hi = str(min(args.sizes)), str(max(args.sizes))
        diff = runs[hi]["peak_anon_mb"] - runs[lo]["peak_anon_mb"]
        results["memory"] = {
            "runs": runs,
            "settings": TINY,
            "difference_mb": round(diff, 1),
            "extra_pixels_mb": round(runs[hi]["pixels_mb"] - runs[lo]["pixels_mb"], 1),
            "goal_mb": 200,
            "met": diff <= 200,
        }
        print(f"peak anonymous memory, {hi} vs {lo} images: {diff:+.1f} MB (goal <= 200 MB)")
    tp = throughput(args.data_dir, min(args.sizes), args.repeats)
    results["throughput"] = {**tp, "goal_ratio": 0.9, "met": tp["train_ratio"] >= 0.9}
    print(f"training throughput, mapped / in memory: {tp['train_ratio']} (goal >= 0.9)")
    results["cpus"] = os.cpu_count()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
