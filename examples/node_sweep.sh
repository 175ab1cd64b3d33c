#!/usr/bin/env bash
# A sweep on one multi-GPU node, two ways (pick one):
#
# 1. One shard per GPU: GPU i runs every n-th cell from the i-th, in parallel; the shards share the output folder.
#    Best when there are many cells: each process loads the model once and runs its cells one after another.
#
# 2. One data-parallel lm-eval per cell: all GPUs run each cell together, each on its share of the requests
#    (torchrun or accelerate launch; rank 0 writes the results). Best for few cells with many requests each.
#
#   bash examples/node_sweep.sh shards   |   bash examples/node_sweep.sh data-parallel
# Afterwards: kvbench leaderboard sweeps/paper --format md --plot leaderboard.png
set -euo pipefail
CONFIG=${CONFIG:-examples/sweep_paper.yaml}
OUT=${OUT:-sweeps/paper}
GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
mkdir -p "$OUT"
case "${1:-shards}" in
    shards)
        for i in $(seq 0 $((GPUS - 1))); do
            CUDA_VISIBLE_DEVICES=$i kvbench sweep "$CONFIG" --out "$OUT" --shard "$i/$GPUS" > "$OUT/shard$i.log" 2>&1 &
        done
        wait ;;
    data-parallel)
        torchrun --nproc_per_node "$GPUS" -m kvbench.cli sweep "$CONFIG" --out "$OUT" ;;
    *) echo "usage: bash examples/node_sweep.sh [shards|data-parallel]" >&2; exit 2 ;;
esac
