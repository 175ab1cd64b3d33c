#!/usr/bin/env bash
# A sweep as a plain SLURM job array: every task runs the same command on one GPU and claims cells from the shared
# output folder (each cell has its own subfolder and claim), so tasks that finish early take more cells and a lost
# node's cells are taken over once its claims expire. `kvbench sweep ... --executor slurm --workers 8` submits the
# same through submitit. Follow it, then score it, from any node:
#   kvbench sweep --status sweeps/paper
#   kvbench leaderboard sweeps/paper --strict --format md --out leaderboard.md --plot leaderboard.png
#
#   sbatch examples/slurm_sweep.sh
#SBATCH --job-name=kvbench-sweep
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
set -euo pipefail
kvbench sweep examples/sweep_paper.yaml --out sweeps/paper
