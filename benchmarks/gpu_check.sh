#!/usr/bin/env bash
# One-GPU check of kvbench at 32K and 128K tokens (Llama-3.1-8B architecture, random bf16 weights).
# No network: the model is built from its config in memory. Under 8 minutes on one H100/H200-class GPU;
# a hard timeout stops it at 8 minutes whatever happens, and the Python side skips cases past --budget-s.
#
#   bash benchmarks/gpu_check.sh [--attn flash] [--json out.json]     # on a CUDA machine
#   KVBENCH_GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh             # tiny config, any machine, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Fragmentation across 32K-token chunks: let the allocator grow segments instead of reserving new ones.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
