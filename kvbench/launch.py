"""`kvbench sweep CONFIG --out DIR --executor local|slurm`: start sweep workers through submitit; the workers share
the grid by claiming cells (kvbench/claims.py), so no scheduler of ours decides who runs what.

- `local`: N processes on this machine (submitit's LocalExecutor), default one per visible GPU (1 without GPUs),
  each with its own CUDA_VISIBLE_DEVICES; more workers than GPUs share them round-robin. The machine's CPU cores are
  shared out too (torch threads per worker), unless OMP_NUM_THREADS says otherwise. Waits for them.
- `slurm`: a job array of N workers (submitit's SlurmExecutor), with the partition, GPUs per worker, time limit and
  array parallelism from the options or the config's `launch:` mapping. SLURM gives each job its GPUs. Returns once
  submitted: follow with `kvbench sweep --status DIR`.

submitit keeps its job files (the sbatch script, pickled calls, each worker's stdout/stderr) in DIR/.submitit.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvbench.sweep import load_config, run_sweep

LAUNCH_KEYS = {"executor", "workers", "partition", "gpus_per_worker", "time_limit", "array_parallelism"}
DEFAULT_TIME_LIMIT = 24 * 60  # minutes a worker may run


def worker(config: str, out: str, retries: int, expiry: float, gpus: str | None, threads: int | None = None) -> int:
    """One worker (runs in the job's process): claim and run cells until none is left; the count it ran."""
    if gpus is not None:  # before anything touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if threads is not None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # for anything the cells start
        torch.set_num_threads(threads)
        print(f"worker: {torch.get_num_threads()} CPU thread(s)", flush=True)
    return len(run_sweep(config, out, retries=retries, expiry=expiry))


def cpu_threads(workers: int, environ=os.environ) -> int | None:
    """Torch CPU threads for each of `workers` local workers: this machine's cores shared out, at least one. torch's
    default, a thread per core in every process, oversubscribes the cores as soon as two workers share them (two
    workers on 2 cores ran kvbench-tiny's cells about 3x slower: benchmarks/README.md). None where OMP_NUM_THREADS
    is set: the user's choice stands."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, cpu_cores() // workers)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPU ids this process may give out: CUDA_VISIBLE_DEVICES' entries, else 0..count-1."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def gpu_plan(workers: int, per_worker: int, gpus: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per worker: `per_worker` GPUs each, round-robin over `gpus` ("" without GPUs)."""
    if not gpus:
        return [""] * workers
    return [",".join(gpus[(i * per_worker + j) % len(gpus)] for j in range(per_worker)) for i in range(workers)]


def options(args, config: dict) -> dict:
    """The launch options: the command line's, else the config's `launch:` mapping, else the defaults."""
    given = config.get("launch") or {}
    unknown = set(given) - LAUNCH_KEYS
    if unknown:
        raise ValueError(f"launch: unknown key(s) {sorted(unknown)}; it takes {sorted(LAUNCH_KEYS)}")
    chosen = {
        key: getattr(args, key, None) if getattr(args, key, None) is not None else given.get(key) for key in LAUNCH_KEYS
    }
    for key in ("workers", "gpus_per_worker", "time_limit", "array_parallelism"):
        value = chosen[key]
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key.replace('_', '-')} must be an integer >= 1; got {value!r}")
    return chosen


def launch(args) -> int:
    import submitit

    config_path, out = Path(args.config).resolve(), Path(args.out).resolve()
    config = load_config(config_path)
    chosen = options(args, config)
    executor_kind = args.executor or chosen["executor"]
    limit = chosen["time_limit"] or DEFAULT_TIME_LIMIT
    folder = out / ".submitit"
    call = (str(config_path), str(out), args.retries, args.claim_expiry)
    if executor_kind == "local":
        gpus = visible_gpus()
        per_worker = chosen["gpus_per_worker"] or (1 if gpus else 0)
        workers = chosen["workers"] or max(1, len(gpus) // max(1, per_worker))
        plan = gpu_plan(workers, per_worker, gpus)
        threads = cpu_threads(workers)
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=limit, gpus_per_node=0)  # our plan sets the devices, per worker
        jobs = [executor.submit(worker, *call, devices, threads) for devices in plan]
        print(
            f"sweep: {workers} local worker(s) started"
            + (f" on GPUs {', '.join(p or '-' for p in plan)}" if gpus else " (no GPU)")
            + (f", {threads} CPU thread(s) each" if threads else f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
            + f"; logs in {folder}"
        )
        failed = []
        for index, job in enumerate(jobs):
            try:
                print(f"sweep: worker {index} ran {job.result()} cell(s)")
            except Exception as error:  # a worker that died: its claims expire and the others take its cells
                failed.append(index)
                print(f"sweep: worker {index} failed: {str(error).strip().splitlines()[-1]} ({job.paths.stderr})")
        print(_status_line(out))
        return 1 if failed else 0
    if executor_kind == "slurm":
        workers = chosen["workers"] or 1
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        parameters = {
            "name": "kvbench-sweep",
            "timeout_min": limit,
            "gpus_per_node": chosen["gpus_per_worker"] or 1,
            "slurm_array_parallelism": chosen["array_parallelism"] or workers,
        }
        if chosen["partition"]:
            parameters["slurm_partition"] = chosen["partition"]
        executor.update_parameters(**parameters)
        jobs = executor.map_array(worker, *([value] * workers for value in (*call, None)))
        print(
            f"sweep: {len(jobs)} SLURM worker(s) submitted ({jobs[0].job_id.split('_')[0]}); follow them with "
            f"`kvbench sweep --status {args.out}`; job files in {folder}"
        )
        return 0
    raise ValueError(f"--executor must be local or slurm; got {executor_kind!r}")


def _status_line(out: Path) -> str:
    from kvbench.sweep import status

    return status(out).splitlines()[0]
