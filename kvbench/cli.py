"""The `kvbench` command: thin dispatch to the library's modules."""

from __future__ import annotations

import argparse
import sys

from kvbench import __version__, settings


def _footprint(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from kvbench.ledger import analytic_footprint

    footprint, peak = analytic_footprint(
        args.prompt_len,
        args.decode_steps,
        args.chunk_size,
        args.kind,
        sink=args.sink,
        window=args.window,
        keep=args.keep,
        always_keep_window=args.always_keep_window,
        streaming_head_share=args.streaming_head_share,
    )
    table = Table(title=f"analytic KV footprint ({args.kind})")
    table.add_column("kv_footprint")
    table.add_column("kv_peak")
    table.add_row(f"{footprint:.6f}", f"{peak:.6f}")
    Console().print(table)
    return 0


def _methods(args) -> int:
    import json
    import shutil
    import textwrap

    from kvbench.plugins import registry

    rows = []
    for name, entry in registry().items():
        cls = entry.method_class
        rows.append(
            {
                "name": name,
                "category": cls.category,
                "source": entry.source,
                "knob": cls.knob,
                "schedules": list(cls.schedules),
                "parameters": _effective_defaults(cls),
                "description": cls.description,
            }
        )
        extra = getattr(cls, "extra_params", None)  # a wrapper: the wrapped scorer's parameters come flat
        if extra:
            rows[-1]["parameters"].pop(extra, None)
            rows[-1]["wraps"] = "the scorer's own parameters too"
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = min(shutil.get_terminal_size().columns, 100)
    for row in rows:  # a block per method: nothing is cut, at any width
        print(f"{row['name']}  [{row['category']}; from {row['source']}]")
        params = ", ".join(f"{k}={v}" + ("*" if k == row["knob"] else "") for k, v in row["parameters"].items())
        params += f"; {row['wraps']}" if "wraps" in row else ""
        schedules = ", ".join(row["schedules"]) or "- (evicts by its own rule)"
        for text in (row["description"], f"parameters: {params or '-'}", f"schedules: {schedules}"):
            print(textwrap.fill(text, width, initial_indent="    ", subsequent_indent="      "))
    print("* the knob a sweep varies")
    return 0


def _effective_defaults(cls) -> dict:
    """Each parameter's default as a method built with no arguments has it (ScoreMethod's keep: 0.5, not None);
    the declared defaults for a method that needs arguments (a head-pattern file)."""
    import dataclasses

    try:
        instance = cls()
        return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    except (ValueError, TypeError):
        return {f.name: f.default for f in dataclasses.fields(cls)}


def _check(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from kvbench.testing import run_checks

    params = _key_values(args.params)
    results = run_checks(args.name, params)
    table = Table(title=f"kvbench check {args.name} {' '.join(args.params)}".strip())
    for column in ("check", "result", "detail"):
        table.add_column(column)
    colours = {"pass": "green", "fail": "bold red", "skip": "yellow"}
    for result in results:
        table.add_row(result.name, f"[{colours[result.status]}]{result.status.upper()}[/]", result.detail)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    failed = [r.name for r in results if r.failed]
    console.print(f"[bold red]{len(failed)} check(s) failed[/]" if failed else "[green]all checks passed[/]")
    return 1 if failed else 0


def _data_fetch(args) -> int:
    from pathlib import Path

    from kvbench.data import common, fetch

    dest = Path(args.dest) if args.dest else common.default_root()
    if args.what in ("all", "helmet"):
        url = args.url or fetch.HELMET_URL
        print(f"HELMET's data -> {fetch.fetch_helmet(dest, url, args.sha256, keep=args.keep_archive)}")
    if args.what in ("all", "icl"):
        print(f"ICL datasets -> {fetch.fetch_icl(dest, sources=fetch.icl_mirror(args.icl_mirror))}")
    print(f'use it with --metadata \'{{"data_dir": "{dest}"}}\' or {common.DATA_DIR_ENV}={dest}')
    return 0


def _eval(lm_eval_args: list[str]) -> int:
    """`kvbench eval ARGS` is `lm_eval ARGS`, run in this process with kvbench's backend and tasks visible
    (also where the .pth hook is absent, e.g. an editable install)."""
    from kvbench.lmeval.hook import install

    install()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *lm_eval_args]  # lm-eval's CLI reads sys.argv itself
    cli_evaluate()
    return 0


def _sweep(args) -> int:
    from kvbench import launch
    from kvbench.sweep import check_retries, refine, run_sweep, status

    if args.status:
        if args.config:
            raise ValueError("--status takes the sweep's folder only: kvbench sweep --status DIR")
        print(status(args.status))
        return 0
    if not args.config:
        raise ValueError("give a sweep config (kvbench sweep CONFIG.yaml --out DIR), or --status DIR")
    check_retries(args.retries)
    if args.claim_expiry <= 0:
        raise ValueError(f"--claim-expiry must be a number of seconds > 0; got {args.claim_expiry}")
    if args.executor:
        if args.shard or args.dry_run or args.refine is not None:
            raise ValueError(
                "--executor starts workers that claim cells: it takes no --shard, --dry-run or --refine (run the "
                "refinement once the workers are done)"
            )
        return launch.launch(args)
    ran = run_sweep(
        args.config,
        args.out,
        shard_spec=args.shard,
        dry_run=args.dry_run,
        retries=args.retries,
        expiry=args.claim_expiry,
    )
    if not args.dry_run:
        print(f"{len(ran)} cell(s) run by this worker; results under {args.out}")
    if args.refine is not None and not args.dry_run:
        if args.shard:
            raise ValueError("--refine reads the whole sweep's results: run it once, without --shard, after the shards")
        added = refine(
            args.config,
            args.out,
            args.refine,
            args.refine_budget,
            args.threshold,
            retries=args.retries,
            expiry=args.claim_expiry,
        )
        print(f"refinement: {len(added)} cell(s) added (listed in {args.out}/refined.yaml)")
    return 0


def _leaderboard(args) -> int:
    from pathlib import Path

    from kvbench import leaderboard, scoring

    with _warnings_printed():
        _check_complete(args.results, args.strict)
        runs = scoring.load_runs(args.results, scoring.parse_categories(args.category))
        if not runs:
            raise ValueError("no usable result files among " + " ".join(args.results))
        statistics = {"level": args.ci, "replicates": args.bootstrap, "seed": args.seed}
        if args.thresholds:
            return _thresholds(args, runs, statistics)
        boards = scoring.score_runs(runs, args.threshold, **statistics)
    if not any(board.categories for board in boards):
        raise ValueError("nothing to score: every category was left out (see the warnings above)")
    text = leaderboard.render(boards, args.format, args.threshold, reported=args.reported)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.format} leaderboard -> {args.out}")
    else:
        print(text)
    if args.plot:
        leaderboard.plot(boards, args.plot, args.threshold)
        print(f"plot -> {args.plot}")
    return 0


def _check_complete(paths, strict: bool) -> None:
    """A sweep folder's cells without results are named (a warning; --strict: an error), not scored around."""
    import warnings
    from pathlib import Path

    from kvbench.scoring import ResultFileWarning
    from kvbench.sweep import unfinished

    for path in paths:
        if not Path(path).is_dir():
            continue
        failed, missing = unfinished(path)
        if not failed and not missing:
            continue
        shown = [f"failed: {c}" for c in failed] + [f"no results: {c}" for c in missing]
        message = (
            f"{path}: {len(failed)} failed and {len(missing)} unfinished cell(s) of the sweep's grid are not scored "
            f"(`kvbench sweep --status {path}`): " + "; ".join(shown[:5]) + ("; ..." if len(shown) > 5 else "")
        )
        if strict:
            raise ValueError(message + " (--strict)")
        warnings.warn(message, ResultFileWarning, stacklevel=2)


def _warnings_printed():
    """A left-out file or setting is printed, never silent: `warnings` would show each once, as noise."""
    import contextlib
    import warnings

    from kvbench.scoring import ResultFileWarning

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("always", ResultFileWarning)
    warnings.showwarning = lambda message, *_: print(f"kvbench: warning: {message}", file=sys.stderr)
    return stack


def _thresholds(args, runs, statistics: dict) -> int:
    import json
    from pathlib import Path

    from kvbench import views

    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        raise ValueError(
            f"--thresholds takes numbers separated by commas (0.85,0.9,0.95); got {args.thresholds!r}"
        ) from None
    if args.format not in ("md", "json"):
        raise ValueError("--thresholds writes md or json")
    table = views.threshold_table(runs, thresholds, **statistics)
    text = (
        views.threshold_markdown(table, thresholds, statistics)
        if args.format == "md"
        else json.dumps({"thresholds": thresholds, "statistics": statistics, "rows": table}, indent=1)
    )
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.format} table at {args.thresholds} -> {args.out}")
    else:
        print(text)
    return 0


def _plot(args) -> int:
    from kvbench import scoring, views

    with _warnings_printed():
        if args.view == "trace":
            fig = views.trace_figure(args.results, args.task, args.sample)
        elif args.view == "chunks":
            fig = views.chunks_figure(scoring.load_runs(args.results), args.threshold)
        else:
            fig = views.memory_figure(args.results)
    views.save(fig, args.out)
    print(f"{args.view} -> {args.out}")
    return 0


def _key_values(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"parameters are given as name=value; got {pair!r}")
        params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    from kvbench.statistics import DEFAULT_LEVEL, DEFAULT_REPLICATES, DEFAULT_SEED

    parser = argparse.ArgumentParser(
        prog="kvbench", description="Long-context KV-cache eviction benchmark: measured KV footprint."
    )
    parser.add_argument("--version", action="version", version=f"kvbench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    methods = commands.add_parser("methods", help="every registered method: built-in and from plugins")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(run=_methods)

    check = commands.add_parser("check", help="the conformance kit: run before contributing a method")
    check.add_argument("name", help="a registered method name")
    check.add_argument("params", nargs="*", metavar="param=value", help="method parameters")
    check.set_defaults(run=_check)

    fp = commands.add_parser(
        "footprint", help="the paper's analytic KV footprint and peak for given settings (a calculator)"
    )
    fp.add_argument("--prompt-len", type=int, required=True)
    fp.add_argument("--decode-steps", type=int, default=0)
    fp.add_argument("--chunk-size", type=int, default=settings.DEFAULT_CHUNK_SIZE)
    fp.add_argument("--kind", choices=["full", "streaming", "chunked_keep", "head_mix"], default="full")
    fp.add_argument("--sink", type=int, default=settings.DEFAULT_SINK, help="streaming heads: attention-sink entries")
    fp.add_argument("--window", type=int, default=settings.DEFAULT_WINDOW, help="streaming heads: local window")
    fp.add_argument(
        "--keep", type=float, default=settings.DEFAULT_KEEP, help="chunked_keep: share of each chunk kept by score"
    )
    fp.add_argument(
        "--always-keep-window",
        type=int,
        default=settings.DEFAULT_RECENT,
        help="chunked_keep: recent entries always kept",
    )
    fp.add_argument(
        "--streaming-head-share",
        type=float,
        default=settings.DEFAULT_HEAD_SPARSITY,
        help="head_mix: share of streaming heads",
    )
    fp.set_defaults(run=_footprint)

    data = commands.add_parser("data", help="task data: HELMET's released files and the ICL datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_commands.add_parser(
        "fetch",
        help="download and unpack HELMET's data and the ICL datasets (online; resumable; ICL sources checksummed)",
    )
    fetch.add_argument("what", nargs="?", choices=["all", "helmet", "icl"], default="all")
    fetch.add_argument("--dest", help="target folder (default: $KVBENCH_DATA_DIR, else ~/.cache/kvbench/helmet)")
    fetch.add_argument("--url", default=None, help="mirror of HELMET's data.tar.gz")
    fetch.add_argument("--sha256", default=None, help="expected SHA-256 of data.tar.gz")
    fetch.add_argument("--keep-archive", action="store_true", help="keep data.tar.gz after unpacking")
    fetch.add_argument(
        "--icl-mirror",
        default=None,
        metavar="URL",
        help="fetch the ICL source files from URL/<source>/<file name> instead (checksums still pinned)",
    )
    fetch.set_defaults(run=_data_fetch)

    sweep = commands.add_parser(
        "sweep", help="run a grid of models x methods x knob values x tasks x lengths x chunk sizes (resumable)"
    )
    sweep.add_argument("config", nargs="?", help="sweep config YAML (see examples/sweep_tiny.yaml)")
    sweep.add_argument("--out", default="sweeps", help="results folder, one subfolder per cell (default: sweeps)")
    sweep.add_argument("--shard", default=None, metavar="i/n", help="run every n-th cell from the i-th (0 <= i < n)")
    sweep.add_argument("--dry-run", action="store_true", help="print the equivalent lm_eval command of every cell")
    sweep.add_argument(
        "--refine",
        type=float,
        default=None,
        metavar="WIDTH",
        help="then add knob values where a curve crosses its threshold, until every critical "
        "footprint's 95%% interval is narrower than WIDTH (e.g. 0.05) or the budget is spent",
    )
    sweep.add_argument(
        "--refine-budget", type=int, default=40, metavar="CELLS", help="most cells --refine may add (default 40)"
    )
    sweep.add_argument(
        "--threshold",
        type=float,
        default=settings.DEFAULT_THRESHOLD,
        help=f"--refine's threshold (default {settings.DEFAULT_THRESHOLD})",
    )
    sweep.add_argument(
        "--status", metavar="DIR", default=None, help="print the sweep in DIR: done / running / failed / pending, ETA"
    )
    sweep.add_argument(
        "--retries",
        type=int,
        default=settings.DEFAULT_RETRIES,
        help=f"times a cell that raised is tried again before it is reported failed (default {settings.DEFAULT_RETRIES})",
    )
    sweep.add_argument(
        "--claim-expiry",
        type=float,
        default=settings.DEFAULT_CLAIM_EXPIRY,
        metavar="SECONDS",
        help="a cell whose worker has not refreshed its claim for this long is run again "
        f"(default {settings.DEFAULT_CLAIM_EXPIRY:g})",
    )
    sweep.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default=None,
        help="start workers that share the grid through claimed cells: local processes, or SLURM jobs (submitit)",
    )
    sweep.add_argument(
        "--workers", type=int, default=None, help="workers to start (default: one per visible GPU; 1 without GPUs)"
    )
    sweep.add_argument("--partition", default=None, help="--executor slurm: the partition")
    sweep.add_argument("--gpus-per-worker", type=int, default=None, help="GPUs each worker gets (default 1 with GPUs)")
    sweep.add_argument(
        "--time-limit", type=int, default=None, metavar="MINUTES", help="each worker's time limit (default 24 h)"
    )
    sweep.add_argument(
        "--array-parallelism",
        type=int,
        default=None,
        help="--executor slurm: the most workers running at once (default: all)",
    )
    sweep.set_defaults(run=_sweep)

    board = commands.add_parser(
        "leaderboard", help="critical KV footprint per method and task category, from lm-eval result files"
    )
    board.add_argument("results", nargs="+", help="lm-eval result files or folders (searched for results*.json)")
    board.add_argument(
        "--threshold", type=float, default=settings.DEFAULT_THRESHOLD, help="share of full attention's score to keep"
    )
    board.add_argument("--format", choices=["md", "csv", "json", "html"], default="md")
    board.add_argument("--out", default=None, help="write the table here (default: print it)")
    board.add_argument("--plot", default=None, metavar="FILE.png", help="score vs footprint per category")
    board.add_argument("--reported", action="store_true", help="add the paper's Table 2, marked as reported")
    board.add_argument(
        "--category",
        action="append",
        metavar="TASK=CATEGORY",
        help="category of a task whose metadata has none (repeatable)",
    )
    board.add_argument(
        "--thresholds",
        default=None,
        metavar="T1,T2,...",
        help="one table at several thresholds (e.g. 0.85,0.9,0.95) with each method's rank (md, json)",
    )
    board.add_argument(
        "--ci",
        type=float,
        default=DEFAULT_LEVEL,
        metavar="LEVEL",
        help=f"confidence level of the intervals and rank ranges (default {DEFAULT_LEVEL})",
    )
    board.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_REPLICATES,
        metavar="N",
        help=f"paired bootstrap replicates over samples (default {DEFAULT_REPLICATES}; 0: no intervals)",
    )
    board.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the bootstrap draws: the same files and seed give the same table (default {DEFAULT_SEED})",
    )
    board.add_argument(
        "--strict", action="store_true", help="refuse a sweep folder whose grid has failed or unfinished cells"
    )
    board.set_defaults(run=_leaderboard)

    plot = commands.add_parser("plot", help="the footprint views: KV held over time, chunk sizes, memory")
    plot_commands = plot.add_subparsers(dest="view", metavar="VIEW", required=True)
    for view, text in (
        ("trace", "KV held over one request, one line per run (runs with trace=true)"),
        ("chunks", "critical footprint against the prefill chunk size, per method and category"),
        ("memory", "measured peak bytes and tokens/s against the idealised footprint and peak"),
    ):
        one = plot_commands.add_parser(view, help=text)
        one.add_argument("results", nargs="+", help="lm-eval result files or folders (a sweep's, or --output_path)")
        one.add_argument("--out", required=True, metavar="FIG.png")
        if view == "trace":
            one.add_argument("--task", default=None, help="the task whose sample to draw (default: the first found)")
            one.add_argument("--sample", type=int, default=0, help="the sample's doc_id (default 0)")
        if view == "chunks":
            one.add_argument("--threshold", type=float, default=settings.DEFAULT_THRESHOLD)
        one.set_defaults(run=_plot)

    # Dispatched in main() before parsing: every argument belongs to lm-eval, whose parser reads them.
    commands.add_parser(
        "eval",
        add_help=False,
        help="lm-eval with kvbench's backend and tasks: `kvbench eval ARGS` = `lm_eval ARGS` (e.g. --model kvbench)",
    )

    prulong = commands.add_parser(
        "prulong", help="PruLong head-pattern training (hard-concrete gates, min-max sparsity)"
    )
    prulong_commands = prulong.add_subparsers(dest="prulong_command", metavar="ACTION", required=True)
    train = prulong_commands.add_parser(
        "train", help="learn which heads keep the full cache; exports scores and a pattern"
    )
    _training_arguments(train, lr=0.1)
    train.add_argument("--target-sparsity", type=float, default=0.5, help="share of streaming heads, in [0, 1)")
    train.add_argument("--warmup-fraction", type=float, default=0.8, help="share of steps the target ramps up over")
    train.add_argument("--lambda-lr", type=float, default=1.0, help="learning rate of the multipliers' ascent")
    _export_arguments(train, default_help="default: the target")
    train.set_defaults(run=_prulong_train)
    export = prulong_commands.add_parser("export", help="a binary pattern (1 = full head) from learned scores")
    export.add_argument("scores", help="scores.tsv (or .pt/.npy) written by `kvbench prulong train`")
    export.add_argument("--out", required=True, help="the pattern file to write (TSV)")
    _export_arguments(export, default_help="required", required=True)
    export.set_defaults(run=_prulong_export)

    duo = commands.add_parser("duo", help="DuoAttention head-pattern training (hidden-state distillation, L1 gates)")
    duo_commands = duo.add_subparsers(dest="duo_command", metavar="ACTION", required=True)
    train = duo_commands.add_parser("train", help="learn gate values; exports DuoAttention's TSV")
    _training_arguments(train, lr=0.02)
    train.add_argument("--reg", type=float, default=0.05, help="weight of the L1 penalty on the gates")
    train.set_defaults(run=_duo_train)

    from kvbench.demo import TASKS as demo_tasks

    demo = commands.add_parser(
        "demo", help="offline: a small sweep on the bundled tiny model -> critical-KV-footprint table and plot"
    )
    demo.add_argument(
        "--out", default="kvbench-demo", help="folder for the sweep, table and plot (default kvbench-demo)"
    )
    demo.add_argument("--samples", type=int, default=5, help="samples per task (default 5)")
    demo.add_argument("--quick", action="store_true", help="one budget each of four methods (what CI runs)")
    demo.add_argument("--length", type=int, default=1024, help="context length in tokens (default 1024)")
    demo.add_argument("--chunk-size", type=int, default=256, help="prefill chunk size (default 256)")
    demo.add_argument("--tasks", nargs="+", choices=demo_tasks, default=demo_tasks)
    demo.set_defaults(run=_demo)
    return parser


def _training_arguments(parser, lr: float) -> None:
    """The training commands' options; their defaults are TrainSettings' own."""
    import dataclasses

    from kvbench.training.common import TrainSettings

    default = {field.name: field.default for field in dataclasses.fields(TrainSettings)}
    parser.add_argument("--model", required=True, help="a path, a hub name, or kvbench-tiny")
    parser.add_argument("--out", required=True, help="folder for the learned table, the log and the settings")
    parser.add_argument(
        "--data",
        default=default["data"],
        help='"synthetic" (the generators) or a .txt / .jsonl file ({"text"} or {"prompt", "answer"} rows)',
    )
    parser.add_argument("--tasks", nargs="+", default=list(default["tasks"]), help="synthetic tasks, taken in turn")
    parser.add_argument(
        "--answers",
        choices=["gold", "model"],
        default=default["answers"],
        help="synthetic data: supervise the gold answers or the model's own at full attention",
    )
    parser.add_argument("--seq-len", type=int, default=default["seq_len"], help="tokens per training sequence")
    parser.add_argument("--steps", type=int, default=default["steps"])
    parser.add_argument(
        "--batch-size", type=int, default=default["batch_size"], help="sequences per step (per process)"
    )
    parser.add_argument(
        "--sink", type=int, default=default["sink"], help="streaming heads keep the first SINK tokens ..."
    )
    parser.add_argument(
        "--window", type=int, default=default["window"], help="... and the last WINDOW (use the same at inference)"
    )
    parser.add_argument("--lr", type=float, default=lr, help=f"the gates' learning rate (default {lr})")
    parser.add_argument("--seed", type=int, default=default["seed"])
    parser.add_argument("--dtype", default=default["dtype"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: long sequences")
    parser.add_argument("--log-every", type=int, default=default["log_every"])


def _export_arguments(parser, default_help: str, required: bool = False) -> None:
    parser.add_argument(
        "--export-sparsity",
        type=float,
        required=required,
        help=f"share of streaming heads in the binary pattern ({default_help})",
    )
    parser.add_argument(
        "--min-full-per-layer",
        type=int,
        default=0,
        help="refuse an export leaving a layer with fewer full heads than this",
    )


def _train_settings(args):
    from pathlib import Path

    from kvbench.training.common import TrainSettings

    return TrainSettings(
        model=args.model,
        out=Path(args.out),
        data=args.data,
        tasks=tuple(args.tasks),
        answers=args.answers,
        seq_len=args.seq_len,
        steps=args.steps,
        batch_size=args.batch_size,
        sink=args.sink,
        window=args.window,
        lr=args.lr,
        seed=args.seed,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        log_every=args.log_every,
    )


def _prulong_train(args) -> int:
    from kvbench.training.train import PruLongTrainer

    trainer = PruLongTrainer(
        _train_settings(args),
        target_sparsity=args.target_sparsity,
        warmup_fraction=args.warmup_fraction,
        lambda_lr=args.lambda_lr,
        export_sparsity=args.export_sparsity,
        min_full_per_layer=args.min_full_per_layer,
    )
    result = trainer.train()
    if result:
        print(
            f"expected sparsity {result['expected_sparsity']:.3f}; scores: {result['scores']}; "
            f"pattern: {result['pattern']}"
        )
    return 0


def _prulong_export(args) -> int:
    from kvbench.methods.head_pattern import read_pattern
    from kvbench.training import patterns

    pattern = patterns.binary_pattern(read_pattern(args.scores), args.export_sparsity, args.min_full_per_layer)
    print(
        f"{int((pattern == 0).sum())} of {pattern.numel()} heads streaming; written to "
        f"{patterns.write_table(pattern, args.out)}"
    )
    return 0


def _duo_train(args) -> int:
    from kvbench.training.duo import DuoTrainer

    result = DuoTrainer(_train_settings(args), reg=args.reg).train()
    if result:
        print(f"gates: {result['gates']}")
    return 0


def _demo(args) -> int:
    from pathlib import Path

    from kvbench import demo

    table = demo.run(
        args.out,
        samples=args.samples,
        length=args.length,
        chunk_size=args.chunk_size,
        quick=args.quick,
        tasks=args.tasks,
    )
    print(table, end="")
    out = Path(args.out)
    print(f"table -> {out / 'leaderboard.md'}; plot -> {out / 'leaderboard.png'}; sweep -> {out / 'results'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        try:
            return _eval(argv[1:])
        except (ValueError, OSError) as error:
            print(f"kvbench: error: {error}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (`kvbench sweep --status DIR | head`): nothing left to say
        sys.stderr.close()
        return 0
    except (ValueError, OSError) as error:
        print(f"kvbench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
