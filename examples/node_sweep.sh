#!/usr/bin/env bash
# A sweep on one multi-GPU node, two ways (pick one):
#
# 1. One worker per GPU: each loads the model once and claims cells one after another from the shared output
#    folder (kvbench sweep --executor local). Best when there are many cells.
#
# 2. One data-parallel lm-eval per cell: all GPUs run each cell together, each on its share of the requests
#    (torchrun; rank 0 claims the cell and writes its results). Best for few cells with many requests each.
#
#   bash examples/node_sweep.sh workers   |   bash examples/node_sweep.sh data-parallel
# Afterwards: kvbench leaderboard sweeps/paper --strict --format md --plot leaderboard.png
set -euo pipefail
CONFIG=${CONFIG:-examples/sweep_paper.yaml}
OUT=${OUT:-sweeps/paper}
case "${1:-workers}" in
    workers)
        kvbench sweep "$CONFIG" --out "$OUT" --executor local ;;
    data-parallel)
        GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
        torchrun --nproc_per_node "$GPUS" -m kvbench.cli sweep "$CONFIG" --out "$OUT" ;;
    *) echo "usage: bash examples/node_sweep.sh [workers|data-parallel]" >&2; exit 2 ;;
esac
