#!/usr/bin/env bash
# GPU check (on a machine with a CUDA GPU): the trainer and the fused loss in bf16 on a mid-sized
# model; saves benchmarks/results/gpu_check.json with throughput and peak memory. Needs torch (CUDA), transformers,
# zarr and numcodecs; not vLLM. Everything else in kdstream is tested without a GPU.
#   benchmarks/gpu_check.sh            # or: PYTHON=.venv/bin/python benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible')"
"$PY" -m benchmarks.gpu_check --device cuda "$@"
