"""The GPU figures: training throughput of ResNet-50 at 224 px and one k-means iteration at the
paper's scale of one shard (ClusterFit §3: K up to 16,000 on 2048-d ResNet-50 features).

1. Training: images per second of the engine's step (forward, summed cross-entropy, backward,
   SGD) of the project's ``resnet50`` at 224 px, in four settings, run in interleaved rounds in
   one process: float32 / bf16 autocast x contiguous / channels-last. Batches are random tensors
   already on the GPU, so the figure is the model's, not the data pipeline's.
2. GEMM peak: float32 (no TF32) and bf16 matmul TFLOP/s of the device, measured in the same run,
   so the k-means assignment can be quoted as a share of it.
3. k-means, N = 1M, D = 2048, K = 16,000, one Lloyd iteration: the project's torch backend on
   the GPU (``KMeans(backend="torch", device="cuda")``, its ``history_[0]["seconds"]``) against
   ``faiss.Kmeans`` on the CPU (all cores; faiss-gpu too when installed).

    python benchmarks/gpu_check.py                  # on a GPU: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny --out X   # toy sizes (resnet18), any device: a check

``scripts/gpu_check.sh`` runs the CUDA tests and this script in under 10 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterfit.cluster import KMeans
from clusterfit.cluster.assign import faiss_has_gpu, import_faiss
from clusterfit.models import create_model
from clusterfit.train.engine import summed_cross_entropy

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(
    device: torch.device,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    rounds: int,
    arch: str = "resnet50",
) -> dict[str, Any]:
    """Images per second of a training step of ``arch`` in each of SETTINGS (median of
    ``rounds`` interleaved rounds of ``steps`` timed steps after ``warmup``)."""
    nets, opts = {}, {}
    for precision, cl in SETTINGS:
        torch.manual_seed(0)
        net = create_model(arch, [1000], in_chans=3).to(device)
        if cl:
            net.channels_last()
        nets[precision, cl] = net.train()
        opts[precision, cl] = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch, 3, size, size), generator=gen, device=device)
    y = torch.randint(0, 1000, (batch,), generator=gen, device=device)
    times: dict[tuple[str, bool], list[float]] = {s: [] for s in SETTINGS}

    def step(setting: tuple[str, bool]) -> None:
        net, opt = nets[setting], opts[setting]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting[0] == "bf16"):
            loss = summed_cross_entropy(net(x), [y])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for r in range(rounds):
        for setting in SETTINGS:
            for _ in range(warmup if r == 0 else 1):
                step(setting)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(setting)
            _sync(device)
            times[setting].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"arch": arch, "image_size": size, "batch": batch, "steps": steps}
    base = None
    for precision, cl in SETTINGS:
        ips = batch * steps / statistics.median(times[precision, cl])
        base = base or ips
        key = f"{precision}_{'channels_last' if cl else 'contiguous'}"
        out[key] = {"images_per_s": round(ips, 1), "vs_fp32_contiguous": round(ips / base, 3)}
        print(f"train {arch} {size}px {key:<24} {ips:9.1f} img/s  x{ips / base:.2f}")
    return out


def gemm_peak(device: torch.device, n: int) -> dict[str, float]:
    """TFLOP/s of an n x n x n matmul in float32 (TF32 off) and bfloat16."""
    out = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if device.type == "cpu" and dtype == torch.bfloat16:
                continue
            a = torch.randn((n, n), device=device, dtype=dtype)
            b = torch.randn((n, n), device=device, dtype=dtype)
            a @ b
            _sync(device)
            reps, t0 = 5, time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            out[f"{name}_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, 2)
            print(f"gemm {name} {n}^3: {out[f'{name}_tflops']} TFLOP/s")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def blobs(n: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """n x d float32 rows around 4,096 random centres (unit-norm rows, like ClusterFit's
    L2-normalised features), made on ``device`` in chunks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn((4096, d), generator=gen, device=device)
    x = torch.empty((n, d), device=device)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        idx = torch.randint(0, 4096, (b - a,), generator=gen, device=device)
        x[a:b] = centres[idx] + 0.7 * torch.randn((b - a, d), generator=gen, device=device)
    return torch.nn.functional.normalize(x, dim=1)


def kmeans_one_iteration(
    device: torch.device, n: int, d: int, k: int, faiss_threads: int, peak: float | None
) -> dict[str, Any]:
    """Seconds of one Lloyd iteration: the torch backend on ``device`` against faiss on CPU."""
    flops = 2.0 * n * k * d
    out: dict[str, Any] = {"n": n, "d": d, "k": k, "assignment_gflop": round(flops / 1e9, 1)}
    X = blobs(n, d, device)
    _sync(device)
    t0 = time.perf_counter()
    km = KMeans(k, n_iter=1, backend="torch", device=str(device), progress=False).fit(X)
    _sync(device)
    it = km.history_[0]["seconds"]
    out["torch"] = {
        "device": str(device),
        "iteration_s": round(it, 3),
        "fit_s": round(time.perf_counter() - t0, 3),  # + validation, init, final labels
        "assignment_tflops": round(flops / it / 1e12, 2),
        "objective": float(km.history_[0]["objective"]),
    }
    if peak:
        out["torch"]["share_of_fp32_gemm_peak"] = round(flops / it / 1e12 / peak, 3)
    print(f"k-means torch {device}: one iteration {it:.2f} s ({flops / it / 1e12:.1f} TFLOP/s)")
    Xh = np.ascontiguousarray(X.cpu().numpy())
    del X, km
    if device.type == "cuda":
        torch.cuda.empty_cache()
    faiss = import_faiss()
    if faiss is None:
        out["faiss_cpu"] = None
        return out
    for name, gpu in (("faiss_cpu", False), ("faiss_gpu", True)):
        if gpu and (device.type != "cuda" or not faiss_has_gpu(faiss)):
            continue
        faiss.omp_set_num_threads(faiss_threads)
        # every point takes part (faiss would otherwise sample 256 per centroid)
        fk = faiss.Kmeans(d, k, niter=1, seed=0, max_points_per_centroid=n, gpu=gpu)
        t0 = time.perf_counter()
        fk.train(Xh)
        wall = time.perf_counter() - t0
        # faiss's per-iteration stats: seconds since training began (sampling included)
        stats = fk.iteration_stats[0] if len(fk.iteration_stats) else {}
        it = float(stats.get("time", wall))
        out[name] = {
            "threads": faiss_threads,
            "iteration_s": round(it, 3),
            "search_s": round(float(stats.get("time_search", float("nan"))), 3),
            "train_s": round(wall, 3),
            "assignment_tflops": round(flops / it / 1e12, 3),
        }
        print(f"k-means {name} ({faiss_threads} threads): one iteration {it:.2f} s")
    if out.get("faiss_cpu"):
        ratio = out["faiss_cpu"]["iteration_s"] / out["torch"]["iteration_s"]
        out["torch_speedup_vs_faiss_cpu"] = round(ratio, 1)
        print(f"k-means: torch on {device} is {ratio:.1f}x faiss on the CPU")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy sizes, any device (checks the script)")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu_check.json)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-kmeans", action="store_true")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.tiny:
        sizes = dict(size=32, batch=2, steps=1, warmup=1, rounds=1, arch="resnet18")
        km = dict(n=3000, d=32, k=16)
        gemm_n = 256
    else:
        sizes = dict(size=224, batch=128, steps=20, warmup=5, rounds=3)
        km = dict(n=1_000_000, d=2048, k=16_000)
        gemm_n = 8192
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "host_cpus": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tiny": args.tiny,
        "finished": None,
    }
    result["gemm"] = gemm_peak(device, gemm_n)
    if not args.skip_train:
        result["train"] = train_throughput(device, **sizes)
    if not args.skip_kmeans:
        result["kmeans"] = kmeans_one_iteration(
            device, **km, faiss_threads=int(threads or 1), peak=result["gemm"].get("fp32_tflops")
        )
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = args.out or RESULTS / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
