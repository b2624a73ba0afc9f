#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the CUDA tests, then the GPU benchmarks, in one go (expected
# 5-10 minutes on an H100/H200, not yet timed; the benchmark's image folders are made on the first run).
# Results: bench/out/gpu.json and the printed table (copy the figures into bench/RESULTS.md).
# Usage: bench/gpu_check.sh [PYTHON]     (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch")'
"$py" -m pytest -q -ra tests/test_cuda.py tests/test_metric.py -k "cuda or gpu" -p no:cacheprovider
mkdir -p bench/out
"$py" -m bench.gpu_bench --json bench/out/gpu.json
