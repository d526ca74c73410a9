#!/usr/bin/env bash
# The paper's control experiment at GPU scale (benchmarks/RESULTS.md, "At GPU scale"):
# all 45,000 CIFAR-10 train images, a torchvision ResNet-18 at 32 px, 60 epochs without
# augmentation, p in {0, 0.5}, N_cf at K = 100; probes on CIFAR-10 and Fashion-MNIST.
#
# Runs from the repository root on a machine with one GPU and no network:
#   bash benchmarks/paper_gpu.sh [SECONDS]      # default 540: stops there, a rerun resumes
#
# Data (no network there): CIFAR-10's tarball and README, and Fashion-MNIST's four IDX files,
# in benchmarks/runs/gpu-data/ (ignored by git; ~50 MB). Stage them on a machine that has them:
#   mkdir -p benchmarks/runs/gpu-data/cifar10 benchmarks/runs/gpu-data/fashion-mnist
#   cp /work/shared/data/cifar10/* benchmarks/runs/gpu-data/cifar10/
#   cp /usr/share/datasets/fashion-mnist/*.gz benchmarks/runs/gpu-data/fashion-mnist/
# and carry benchmarks/runs/gpu-data (and benchmarks/runs/gpu-runs, to resume) to the device.
# Results: benchmarks/results/paper_gpu.{json,md} and paper_gpu_report/, copied to $OUT when it
# is set; commit them with `git add benchmarks/results/paper_gpu*`.
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${1:-540}"
data="benchmarks/runs/gpu-data"
export CLUSTERFIT_CACHE="${CLUSTERFIT_CACHE:-$PWD/benchmarks/runs/gpu-cache}"
export CLUSTERFIT_FMNIST_DIR="${CLUSTERFIT_FMNIST_DIR:-$PWD/$data/fashion-mnist}"
python -c "import clusterfit" 2>/dev/null || pip install -q -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
timeout --signal=INT "$limit" python -m benchmarks.paper --gpu --device auto \
    --data-root "$data" --runs "$PWD/benchmarks/runs/gpu-runs" --threads 8 || status=$?
python -m benchmarks.paper --gpu --report-only --data-root "$data" \
    --runs "$PWD/benchmarks/runs/gpu-runs"
if [ -n "${OUT:-}" ]; then
    cp -r benchmarks/results/paper_gpu.json benchmarks/results/paper_gpu.md "$OUT"/
    [ -d benchmarks/results/paper_gpu_report ] && cp -r benchmarks/results/paper_gpu_report "$OUT"/
fi
echo "paper_gpu: exit status $status (124 or 130: stopped at the time limit; rerun to resume)"
