#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): kvbench at 8K-128K tokens on the Llama-3.1-8B architecture and a
# sliding-window model at 64K, random bf16 weights, one JSON line per case as it ends. No network: the packages the
# GPU machine's image lacks come as wheels fetched beforehand by benchmarks/fetch_gpu_wheels.sh into .whl/, installed
# here without an index into a folder of their own; this checkout's kvbench is imported, not an installed one.
# A hard timeout stops everything at 8 minutes; the Python side starts no case after 450 s.
#
#   bash benchmarks/fetch_gpu_wheels.sh                         # here, once (needs the package index)
#   bash benchmarks/gpu_check.sh --json gpu_check.jsonl         # there
#   KVBENCH_GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh       # tiny sizes, any machine, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${KVBENCH_GPU_SITE:-/tmp/kvbench-gpu-site}
if compgen -G ".whl/*.whl" >/dev/null; then
    # Wheels for any Python 3 install anywhere; the few for CPython 3.12 (on x86-64) only where they fit.
    mapfile -t pure < <(ls .whl/*.whl | grep -E -- '-(py3|py2\.py3)-none-any\.whl$')
    mapfile -t built < <(ls .whl/*.whl | grep -v -E -- '-(py3|py2\.py3)-none-any\.whl$' || true)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${pure[@]}"
    if [ "${#built[@]}" -gt 0 ] && "$PY" -c 'import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 12) and platform.machine() == "x86_64"))'; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${built[@]}"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# Fragmentation across 32K-token chunks: let the allocator grow segments instead of reserving new ones.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
