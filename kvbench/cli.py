"""The `kvbench` command: thin dispatch to the library's modules."""

from __future__ import annotations

import argparse
import sys

from kvbench import __version__


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
    import dataclasses
    import json

    from kvbench.plugins import registry

    rows = []
    for name, entry in registry().items():
        cls = entry.method_class
        rows.append({
            "name": name,
            "category": cls.category,
            "source": entry.source,
            "knob": cls.knob,
            "parameters": {f.name: f.default for f in dataclasses.fields(cls)},
            "description": cls.description,
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kvbench methods")
    for column in ("name", "category", "from", "parameters (defaults)", "description"):
        table.add_column(column)
    for row in rows:
        params = ", ".join(f"{k}={v}" + ("*" if k == row["knob"] else "") for k, v in row["parameters"].items())
        table.add_row(row["name"], row["category"], row["source"], params or "-", row["description"])
    Console().print(table)
    Console().print("* the knob a sweep varies")
    return 0


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
        fetch.fetch_icl(dest)
        print(f"ICL datasets -> {dest / 'data' / 'icl'}")
    print(f"use it with --metadata '{{\"data_dir\": \"{dest}\"}}' or {common.DATA_DIR_ENV}={dest}")
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
    from kvbench.sweep import run_sweep

    ran = run_sweep(args.config, args.out, shard_spec=args.shard, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{len(ran)} cell(s) run; results under {args.out}")
    return 0


def _leaderboard(args) -> int:
    import warnings
    from pathlib import Path

    from kvbench import leaderboard, scoring

    with warnings.catch_warnings():
        # A left-out file is printed, never silent: `warnings` shows each once, as "file: line: message" noise.
        warnings.simplefilter("always", scoring.ResultFileWarning)
        warnings.showwarning = lambda message, *_: print(f"kvbench: warning: {message}", file=sys.stderr)
        runs = scoring.load_runs(args.results, scoring.parse_categories(args.category))
    if not runs:
        raise ValueError("no usable result files among " + " ".join(args.results))
    boards = scoring.score_runs(runs, args.threshold)
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


def _key_values(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"parameters are given as name=value; got {pair!r}")
        params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
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
    fp.add_argument("--chunk-size", type=int, default=32768)
    fp.add_argument("--kind", choices=["full", "streaming", "chunked_keep", "head_mix"], default="full")
    fp.add_argument("--sink", type=int, default=128, help="streaming heads: attention-sink entries")
    fp.add_argument("--window", type=int, default=1024, help="streaming heads: local window")
    fp.add_argument("--keep", type=float, default=0.5, help="chunked_keep: share of each chunk kept by score")
    fp.add_argument("--always-keep-window", type=int, default=64, help="chunked_keep: recent entries always kept")
    fp.add_argument("--streaming-head-share", type=float, default=0.5, help="head_mix: share of streaming heads")
    fp.set_defaults(run=_footprint)

    data = commands.add_parser("data", help="task data: HELMET's released files and the ICL datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_commands.add_parser(
        "fetch", help="download and unpack HELMET's data and the ICL datasets (online; resumable, checksummed)"
    )
    fetch.add_argument("what", nargs="?", choices=["all", "helmet", "icl"], default="all")
    fetch.add_argument("--dest", help="target folder (default: $KVBENCH_DATA_DIR, else ~/.cache/kvbench/helmet)")
    fetch.add_argument("--url", default=None, help="mirror of HELMET's data.tar.gz")
    fetch.add_argument("--sha256", default=None, help="expected SHA-256 of data.tar.gz")
    fetch.add_argument("--keep-archive", action="store_true", help="keep data.tar.gz after unpacking")
    fetch.set_defaults(run=_data_fetch)

    sweep = commands.add_parser(
        "sweep", help="run a grid of models x methods x knob values x tasks x lengths x chunk sizes (resumable)"
    )
    sweep.add_argument("config", help="sweep config YAML (see examples/sweep_tiny.yaml)")
    sweep.add_argument("--out", default="sweeps", help="results folder, one subfolder per cell (default: sweeps)")
    sweep.add_argument("--shard", default=None, metavar="i/n", help="run every n-th cell from the i-th (0 <= i < n)")
    sweep.add_argument("--dry-run", action="store_true", help="print the equivalent lm_eval command of every cell")
    sweep.set_defaults(run=_sweep)

    board = commands.add_parser(
        "leaderboard", help="critical KV footprint per method and task category, from lm-eval result files"
    )
    board.add_argument("results", nargs="+", help="lm-eval result files or folders (searched for results*.json)")
    board.add_argument("--threshold", type=float, default=0.9, help="share of full attention's score to keep")
    board.add_argument("--format", choices=["md", "csv", "json", "html"], default="md")
    board.add_argument("--out", default=None, help="write the table here (default: print it)")
    board.add_argument("--plot", default=None, metavar="FILE.png", help="score vs footprint per category")
    board.add_argument("--reported", action="store_true", help="add the paper's Table 2, marked as reported")
    board.add_argument("--category", action="append", metavar="TASK=CATEGORY",
                       help="category of a task whose metadata has none (repeatable)")
    board.set_defaults(run=_leaderboard)

    # Dispatched in main() before parsing: every argument belongs to lm-eval, whose parser reads them.
    commands.add_parser(
        "eval", add_help=False,
        help="lm-eval with kvbench's backend and tasks: `kvbench eval ARGS` = `lm_eval ARGS` (e.g. --model kvbench)",
    )

    demo = commands.add_parser("demo", help="offline: a small sweep on the bundled tiny model, a footprint/score table")
    demo.add_argument("--length", type=int, default=1024, help="context length in tokens (default 1024)")
    demo.add_argument("--samples", type=int, default=3, help="samples per task (default 3)")
    demo.add_argument("--chunk-size", type=int, default=256, help="prefill chunk size (default 256)")
    demo.add_argument("--tasks", nargs="*", choices=["synth_recall", "synth_rag", "synth_rerank", "synth_icl"])
    demo.add_argument("--out", help="also write the table as Markdown to this file")
    demo.set_defaults(run=_demo)
    return parser


def _demo(args) -> int:
    from kvbench.tiny import demo

    tasks = args.tasks or list(demo.CATEGORIES)
    _, table = demo.run(length=args.length, samples=args.samples, chunk_size=args.chunk_size, tasks=tasks, out=args.out)
    print(table, end="")
    if args.out:
        print(f"written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        try:
            return _eval(argv[1:])
        except ValueError as error:
            print(f"kvbench: error: {error}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"kvbench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
