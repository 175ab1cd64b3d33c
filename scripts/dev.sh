#!/usr/bin/env bash
# Set up a fresh clone and run a flow:  bash scripts/dev.sh demo | test [pytest args] | example
# Set-up: a .venv with the CPU build of torch (installed first: a plain `torch` requirement would
# pull a multi-GB CUDA build), then kvbench itself (not editable, as users get it) with its test and dev
# extras, and the example plugin from plugins/ (its tests and `kvbench check` on it are part of the suite).
# `test` lints (ruff check, ruff format --check), then runs pytest on every core (pytest-xdist); pass pytest
# arguments after it, e.g. `bash scripts/dev.sh test -m "not slow"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "kvbench set-up: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
    say "installing the CPU build of torch first (a plain torch requirement would pull a CUDA build)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q torch==2.13.0
fi
say "installing kvbench, its test and dev extras and the example plugin into .venv (a minute or two the first time)"
"$PY" -m pip install -q ".[test,dev]" ./plugins/kvbench-tova
say "done; to use the kvbench and lm_eval commands yourself: source .venv/bin/activate"
case "${1:-test}" in
    test)
        shift || true
        .venv/bin/ruff check . && .venv/bin/ruff format --check .
        exec "$PY" -m pytest -n auto --dist loadfile "$@" ;;
    demo) shift || true; exec .venv/bin/kvbench demo "$@" ;;
    example) exec "$PY" examples/streaming_vs_full.py ;;
    *) echo "usage: bash scripts/dev.sh [demo|test|example]" >&2; exit 2 ;;
esac
