#!/usr/bin/env bash
# A sweep as a SLURM job array: task i of n runs every n-th cell from the i-th (kvbench sweep --shard i/n), each on
# one GPU, all writing into one output folder (each cell has its own subfolder; a rerun skips finished cells).
# Then, from any node, once the array is done:
#   kvbench leaderboard sweeps/paper --format md --out leaderboard.md --plot leaderboard.png
#
#   sbatch examples/slurm_sweep.sh
#SBATCH --job-name=kvbench-sweep
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
set -euo pipefail
kvbench sweep examples/sweep_paper.yaml --out sweeps/paper --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
