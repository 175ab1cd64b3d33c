#!/usr/bin/env bash
# The GPU check's rehearsal on a CPU: what the GPU machine will do, with tiny sizes. In a fresh venv that stands in for
# the GPU machine's image (torch, and the packages the image has that the check uses: transformers 5.17,
# accelerate, numpy, tokenizers, safetensors, pluggy, pyyaml, rich; no lm-eval), fetch the pinned wheels
# (benchmarks/fetch_gpu_wheels.sh), then run benchmarks/gpu_check.sh in tiny mode: it installs the wheels that fit
# this CPU's Python without an index, imports this checkout, and must pass. Needs the package index, for the venv.
#
#   bash benchmarks/gpu_check_dry_run.sh          # from a clean clone; a few minutes
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DRY_RUN_VENV:-$(mktemp -d)/venv}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "transformers==5.17.0" accelerate numpy tokenizers safetensors pluggy pyyaml rich \
    regex typer shellingham tqdm packaging filelock fsspec anyio certifi idna h11 hf-xet jinja2
bash benchmarks/fetch_gpu_wheels.sh
KVBENCH_GPU_CHECK_TINY=1 PYTHON="$VENV/bin/python" CUDA_VISIBLE_DEVICES= KVBENCH_GPU_SITE="$(dirname "$VENV")/site" \
    bash benchmarks/gpu_check.sh --json "$(dirname "$VENV")/gpu_check.jsonl"
echo "gpu_check_dry_run: passed (venv $VENV)"
