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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvbench", description="Long-context KV-cache eviction benchmark: measured KV footprint."
    )
    parser.add_argument("--version", action="version", version=f"kvbench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except ValueError as error:
        print(f"kvbench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
