#!/usr/bin/env bash
# The GPU checks, in under 10 minutes on one GPU (an H200: about 1.5 min of tests, 4-5 min of
# figures): the CUDA-only tests (bf16 + channels-last training, fp16/bf16 extraction, the torch
# k-means backend and the pipeline on the GPU, faiss-gpu and NCCL where present), then
# benchmarks/gpu_check.py (ResNet-50 224 px training img/s with / without channels-last and bf16;
# k-means N=1M D=2048 K=16,000, one iteration, torch on the GPU vs faiss on the CPU).
# Writes benchmarks/results/gpu_check.json and benchmarks/results/gpu_check_tests.txt.
#
#   scripts/gpu_check.sh             # on a machine with CUDA and the project's dependencies
#   scripts/gpu_check.sh --dry-run   # anywhere: the script's code at toy sizes, to a temp file
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works without an editable install
python=${PYTHON:-python}
results=benchmarks/results

if [[ "${1:-}" == "--dry-run" ]]; then
    out="${TMPDIR:-/tmp}/gpu_check_tiny.json"
    "$python" benchmarks/gpu_check.py --tiny --out "$out"
    exit 0
fi
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$results"

status=0
timeout 240 "$python" -m pytest -q -p no:cacheprovider -rs \
    tests/test_gpu_path.py tests/cluster/test_kmeans_cuda.py 2>&1 \
    | tee "$results/gpu_check_tests.txt" || status=$?
timeout 330 "$python" benchmarks/gpu_check.py --out "$results/gpu_check.json" || status=$?
exit "$status"
