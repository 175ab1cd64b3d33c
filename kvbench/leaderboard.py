"""`kvbench leaderboard RESULTS...`: the critical KV footprint per method and category, as Markdown, CSV,
JSON or a self-contained HTML page, and plots of score against footprint with the threshold line.

Measured rows come from kvbench.scoring. `--reported` adds the paper's Table 2 (kvbench/data/paper_table2.json)
beside them: always in rows marked `reported`, never mixed into measured figures or plots.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from importlib import resources

import numpy as np

from kvbench.scoring import GroupBoard, split_label
from kvbench.statistics import format_rank

COLUMNS = (
    "source",
    "model",
    "context_length",
    "chunk_size",
    "category",
    "method",
    "query",
    "critical_footprint",
    "mark",
    "critical",
    "ci_low",
    "ci_high",
    "ci_level",
    "interval",
    "n",
    "rank",
    "rank_low",
    "rank_high",
    "peak_at_critical",
    "peak_bytes_at_critical",
    "baseline_score",
    "threshold",
)


def reported_table() -> dict:
    return json.loads(resources.files("kvbench.data").joinpath("paper_table2.json").read_text())


def rows(boards: list[GroupBoard], threshold: float, reported: bool = False) -> list[dict]:
    """One row per (group, category, method): the long form every format is made from. `ci_low` / `ci_high` are
    fractions like `critical_footprint`, None where the interval is open (past the footprints tried) or missing;
    `interval` is its text ("38–51", "<31–40"); `rank` the range of places ("2–4"); `ahead` (JSON only) the
    probability that this method needs a smaller footprint than each other of its query mode."""
    out = []
    for board in boards:
        for category, cb in board.categories.items():
            for label, c in sorted(cb.critical.items()):
                method, query = split_label(label)
                interval, rank = cb.interval.get(label), cb.rank.get(label)
                tried = [p.footprint for p in cb.points if p.method == label]
                n = next((p.n for p in cb.points if p.method == label), cb.n)
                out.append(
                    {
                        "source": "measured",
                        "model": board.model,
                        "context_length": board.context_length,
                        "chunk_size": board.chunk_size,
                        "category": category,
                        "method": method,
                        "query": query,
                        "critical_footprint": c.value,
                        "mark": c.mark,
                        "critical": str(c),
                        "ci_low": interval.open_low if interval else None,
                        "ci_high": interval.open_high if interval else None,
                        "ci_level": interval.level if interval else None,
                        "interval": interval.text(min(tried), max(tried)) if interval else None,
                        "n": n,
                        "rank": format_rank(rank) if rank else None,
                        "rank_low": rank[0] if rank else None,
                        "rank_high": rank[1] if rank else None,
                        "ahead": {split_label(other)[0]: p for other, p in sorted(cb.ahead.get(label, {}).items())},
                        "peak_at_critical": c.peak,
                        "peak_bytes_at_critical": c.peak_bytes,
                        "baseline_score": cb.baseline,
                        "threshold": threshold,
                    }
                )
    if reported:
        paper = reported_table()
        for method, values in paper["rows"].items():
            for category, value in zip(paper["categories"], values, strict=True):
                mark = value[0] if value[0] in "<>" else ""
                out.append(
                    {
                        "source": "reported (arXiv 2506.17121, Table 2)",
                        "model": paper["model"],
                        "context_length": paper["context_length"],
                        "chunk_size": paper["chunk_size"],
                        "category": category,
                        "method": method,
                        "query": "aware",
                        "critical_footprint": float(value.lstrip("<>")) / 100,
                        "mark": mark,
                        "critical": f"{value}%",
                        "ci_low": None,
                        "ci_high": None,
                        "ci_level": None,
                        "interval": None,
                        "n": None,
                        "rank": None,
                        "rank_low": None,
                        "rank_high": None,
                        "ahead": {},
                        "peak_at_critical": None,
                        "peak_bytes_at_critical": None,
                        "baseline_score": None,
                        "threshold": paper["threshold"],
                    }
                )
    return out


def cell_text(row: dict) -> str:
    """ "44% [38–51]": the critical footprint and its interval (the value alone where there is none)."""
    return f"{row['critical']} [{row['interval']}]" if row.get("interval") else row["critical"]


def statistics_note(boards: list[GroupBoard]) -> str:
    """What the intervals and ranks rest on, in one paragraph (empty without any)."""
    settings = {
        (b.statistics["level"], b.statistics["replicates"], b.statistics["seed"])
        for b in boards
        if b.statistics and any(cb.interval for cb in b.categories.values())
    }
    if not settings:
        return ""
    level, replicates, seed = sorted(settings)[0]
    notes = sorted({note for b in boards for cb in b.categories.values() for note in cb.notes})
    text = (
        f"[brackets]: the {100 * level:g}% interval of the critical footprint, from {replicates} paired bootstrap "
        f"replicates over samples (seed {seed}; BCa); an end past the footprints tried is open (`<`, `>`). "
        f"rank: the range of places (1 = the smallest footprint) a method is not separated from at "
        f"{100 * level:g}% (pairwise), within its query mode. n: samples behind each point, over the "
        "category's tasks."
    )
    if notes:
        text += " Without an interval or rank: " + "; ".join(notes)
    return text


def _wide(table: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """Method rows x category columns per (source, group), as the paper's Table 2. Columns are (category, query
    mode): with query-agnostic runs, a pair per category, the two modes side by side."""
    categories = list(dict.fromkeys(r["category"] for r in table))
    columns = sorted(
        {(r["category"], r["query"]) for r in table},  # categories in table order, aware first
        key=lambda c: (categories.index(c[0]), c[1] != "aware", c[1]),
    )
    grid: dict = {}
    for r in table:
        group = (r["source"], r["model"], r["context_length"], r["chunk_size"])
        grid.setdefault(group, {}).setdefault(r["method"], {})[(r["category"], r["query"])] = r
    return columns, grid


def _column_name(column: tuple[str, str], columns: list[tuple[str, str]]) -> str:
    category, query = column
    return f"{category} ({query})" if any(q != "aware" for _, q in columns) else category


def _peaks(row: dict | None) -> str:
    """The peak memory at the critical footprint: entries held (% of the tokens) and physical bytes."""
    if row is None or row["peak_at_critical"] is None:
        return "—"
    return f"{100 * row['peak_at_critical']:.0f}% / {_bytes(row['peak_bytes_at_critical'])}"


def _bytes(count: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def to_markdown(table: list[dict], threshold: float, boards: list[GroupBoard] | None = None) -> str:
    columns, grid = _wide(table)
    lines = [
        f"Critical KV footprint: the smallest KV footprint (% of full attention's) keeping "
        f"{threshold:g} x full attention's score; `>`: even the largest footprint tried fell short, `<`: the "
        "smallest passed.",
        "",
    ]
    note = statistics_note(boards or [])
    if note:
        lines += [note, ""]
    if any(query != "aware" for _, query in columns):
        lines += [
            "(aware): the question prefilled with its context; (agnostic): the context prefilled and evicted "
            "before the question is known (query=agnostic).",
            "",
        ]
    names = [_column_name(c, columns) for c in columns]
    for (source, model, context_length, chunk_size), methods in grid.items():
        measured = source == "measured"
        header = [h for name in names for h in ((name, "rank") if measured else (name,))]
        cells_n = sorted(
            {cells[c]["n"] for cells in methods.values() for c in columns if c in cells and cells[c]["n"] is not None}
        )
        n = f", n = {'/'.join(map(str, cells_n))} samples per point" if measured and cells_n else ""
        lines += [
            f"### {model}, context {context_length}, chunk {chunk_size} ({source}{n})",
            "",
            "| method | " + " | ".join(header) + " |",
            "|---" * (len(header) + 1) + "|",
        ]
        for method, cells in methods.items():
            name = f"{method} (reported)" if not measured else method
            values = []
            for c in columns:
                row = cells.get(c)
                values.append(cell_text(row) if row else "—")
                if measured:
                    values.append(row["rank"] or "—" if row else "—")
            lines.append(f"| {_md(name)} | " + " | ".join(values) + " |")
        lines.append("")
        if measured:
            lines += [
                "Peak at the critical footprint: entries held at once (% of the tokens) / physical KV bytes.",
                "",
                "| method | " + " | ".join(names) + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            lines += [
                f"| {_md(method)} | " + " | ".join(_peaks(cells.get(c)) for c in columns) + " |"
                for method, cells in methods.items()
            ]
            lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_json(table: list[dict], boards: list[GroupBoard], threshold: float) -> str:
    def interval(i):
        return None if i is None else [i.open_low, i.open_high]

    runs = [
        {
            "model": b.model,
            "context_length": b.context_length,
            "chunk_size": b.chunk_size,
            "category": c,
            "baseline_score": cb.baseline,
            "method": p.method,
            "params": p.params,
            "score": p.score,
            "footprint": p.footprint,
            "peak": p.peak,
            "peak_bytes": p.peak_bytes,
            "n": p.n,
            "score_ci": interval(p.score_interval),
            "footprint_ci": interval(p.footprint_interval),
            "files": list(p.files),
        }
        for b in boards
        for c, cb in b.categories.items()
        for p in cb.points
    ]
    targets = [
        {
            "model": b.model,
            "context_length": b.context_length,
            "chunk_size": b.chunk_size,
            "category": c,
            "target": cb.target,
            "target_ci": interval(cb.target_interval),
            "n": cb.n,
        }
        for b in boards
        for c, cb in b.categories.items()
    ]
    stats = next((b.statistics for b in boards if b.statistics), None)
    return json.dumps(
        {"threshold": threshold, "statistics": stats, "critical": table, "targets": targets, "runs": runs},
        indent=1,
        default=str,
    )


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def styles(labels: list[str]) -> dict:
    """One look per label, the same in every panel and figure: its own marker, line style and colour, hollow
    markers shrinking down the list, so that curves that coincide still show each other. A query-agnostic curve
    takes its query-aware twin's colour and marker, filled and smaller, on a dotted line: the pair reads as one
    method in two modes, and still shows both where they coincide."""
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases = list(dict.fromkeys(split_label(label)[0] for label in labels))
    # Colours and markers cycle at different steps (the marker moves on by one each time the colours wrap), so that
    # every method up to len(colours) x len(MARKERS) has its own pair: the kvbench-tiny table has 18.
    look = {
        base: dict(
            marker=MARKERS[(i + i // len(colours)) % len(MARKERS)],
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            color=colours[i % len(colours)],
            markersize=9 - 4 * i / max(len(bases) - 1, 1),
            markerfacecolor="none",
            markeredgewidth=1.5,
        )
        for i, base in enumerate(bases)
    }
    out = {}
    for label in labels:
        base, query = split_label(label)
        out[label] = dict(look[base])
        if query == "agnostic":
            out[label].update(
                linestyle=(0, (1, 1.5)), markerfacecolor=look[base]["color"], markersize=0.6 * look[base]["markersize"]
            )
    return out


def figure(boards: list[GroupBoard], threshold: float):
    """Score against footprint per category (one panel each), one line per method, the threshold dashed.

    Every method keeps one style across the panels: its own marker and line style (and colour), hollow markers
    shrinking down the legend, so that methods whose curves coincide (two head patterns learned alike) still show
    both. The legend sits below the panels, off the data; the threshold line is labelled with its own value.
    With per-sample results the noise shows: each point's bootstrap interval (score up and down, footprint across),
    the threshold as a band (threshold x full, full's own interval), and at the foot of the panel each method's
    critical footprint (its marker) on its interval (a bar; an open end runs to the footprint tried, with an arrow).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    panels = [(b, cb) for b in boards for cb in b.categories.values()]
    if not panels:
        raise ValueError("nothing to plot: no scored runs")
    methods = sorted({p.method for _, cb in panels for p in cb.points})
    style = styles(methods)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), squeeze=False)
    for ax, (board, cb) in zip(axes[0], panels, strict=True):
        for method in methods:
            points = sorted((p for p in cb.points if p.method == method), key=lambda p: p.footprint)
            if points:
                ax.plot([100 * p.footprint for p in points], [p.score for p in points], label=method, **style[method])
                _error_bars(ax, [p for p in points if p.score_interval], style[method]["color"])
        ax.axhline(
            cb.target, color="grey", linestyle=(0, (5, 5)), linewidth=1, label=f"{threshold:g} x full = {cb.target:.3g}"
        )
        if cb.target_interval is not None:
            ax.axhspan(cb.target_interval.low, cb.target_interval.high, color="grey", alpha=0.15, linewidth=0)
        ax.annotate(
            f"{threshold:g} x full = {cb.target:.3g}",
            (1, cb.target),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize="x-small",
            color="grey",
        )
        _criticals(ax, cb, style)
        ax.set(
            title=f"{cb.category} — {board.model.rsplit('/', 1)[-1]}, chunk {board.chunk_size}",
            xlabel="KV footprint (% of full)",
            ylabel="score",
        )
    handles = [plt.Line2D([], [], label=m, **style[m]) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 4), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(methods) - 1) // 4), 1, 1))
    return fig


def _error_bars(ax, points, color) -> None:
    if not points:
        return
    xs, ys = [100 * p.footprint for p in points], [p.score for p in points]
    # A percentile interval need not contain the point (and its per-sample values are rounded to a millionth):
    # a bar never reaches back past its point.
    ax.errorbar(
        xs,
        ys,
        fmt="none",
        ecolor=color,
        elinewidth=0.8,
        capsize=2,
        alpha=0.6,
        yerr=[
            [max(p.score - p.score_interval.low, 0) for p in points],
            [max(p.score_interval.high - p.score, 0) for p in points],
        ],
        xerr=[
            [max(100 * (p.footprint - p.footprint_interval.low), 0) for p in points],
            [max(100 * (p.footprint_interval.high - p.footprint), 0) for p in points],
        ],
    )


def _criticals(ax, cb, style) -> None:
    """Each method's critical footprint and its interval in a strip at the foot of the panel (x in data, y in axes)."""
    foot = ax.get_xaxis_transform()
    for row, (label, critical) in enumerate(sorted(cb.critical.items())):
        interval = cb.interval.get(label)
        tried = [100 * p.footprint for p in cb.points if p.method == label]
        if interval is None or not tried:
            continue
        y = 0.03 + 0.035 * row
        low, high = (100 * end for end in interval.on_axis(min(tried) / 100, max(tried) / 100))
        look = {k: v for k, v in style[label].items() if k in ("color", "marker", "markerfacecolor", "markeredgewidth")}
        ax.plot(
            [low, high],
            [y, y],
            transform=foot,
            color=look["color"],
            linewidth=2.5,
            alpha=0.5,
            solid_capstyle="butt",
            label="_interval",
        )
        for is_open, value, arrow in ((np.isneginf(interval.low), low, "<"), (np.isposinf(interval.high), high, ">")):
            if is_open:  # an open end: it goes on past the footprint tried
                ax.plot(
                    [value],
                    [y],
                    transform=foot,
                    color=look["color"],
                    marker=f"${arrow}$",
                    markersize=6,
                    linestyle="none",
                    label="_open",
                )
        ax.plot([100 * critical.value], [y], transform=foot, linestyle="none", markersize=6, label="_critical", **look)


def plot(boards: list[GroupBoard], path_or_buffer, threshold: float) -> None:
    import matplotlib.pyplot as plt

    fig = figure(boards, threshold)
    fig.savefig(path_or_buffer, format="png", dpi=90)
    plt.close(fig)


HTML_COLUMNS = (  # (header, how a row shows it, what it sorts by)
    ("model", lambda r: r["model"], lambda r: r["model"]),
    ("context", lambda r: f"{r['context_length']:,}", lambda r: r["context_length"]),
    ("chunk", lambda r: f"{r['chunk_size']:,}", lambda r: r["chunk_size"]),
    ("category", lambda r: r["category"], lambda r: r["category"]),
    ("query", lambda r: r["query"], lambda r: r["query"]),
    ("method", lambda r: r["method"], lambda r: r["method"]),
    ("critical KV footprint [interval]", cell_text, lambda r: r["critical_footprint"]),
    ("rank", lambda r: r["rank"], lambda r: None if r["rank_low"] is None else r["rank_low"] + r["rank_high"] / 1000),
    ("n", lambda r: r["n"], lambda r: r["n"]),
    (
        "peak held at critical",
        lambda r: None if r["peak_at_critical"] is None else f"{100 * r['peak_at_critical']:.0f}%",
        lambda r: r["peak_at_critical"],
    ),
    (
        "peak KV memory at critical",
        lambda r: None if r["peak_bytes_at_critical"] is None else _bytes(r["peak_bytes_at_critical"]),
        lambda r: r["peak_bytes_at_critical"],
    ),
    (
        "full's score",
        lambda r: None if r["baseline_score"] is None else f"{r['baseline_score']:.3g}",
        lambda r: r["baseline_score"],
    ),
    ("source", lambda r: r["source"], lambda r: r["source"]),
)


def to_html(table: list[dict], boards: list[GroupBoard], threshold: float) -> str:
    """One self-contained page: the table in human units, sortable by clicking a header (numbers sort as numbers,
    an empty cell last), what the intervals mean, and the plot embedded as PNG data."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in HTML_COLUMNS)
    body = []
    for r in table:
        cells = []
        for _, show, key in HTML_COLUMNS:
            text, sort = show(r), key(r)
            cells.append(
                f'<td data-sort="{"" if sort is None else html.escape(str(sort), quote=True)}">'
                f"{'—' if text is None else html.escape(str(text))}</td>"
            )
        css = ' class="reported"' if r["source"] != "measured" else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    image = ""
    if any(b.categories for b in boards):
        buffer = io.BytesIO()
        plot(boards, buffer, threshold)
        image = f'<img alt="score vs KV footprint" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    note = statistics_note(boards)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kvbench leaderboard</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}
th{{cursor:pointer;background:#eee}} tr.reported{{color:#666;font-style:italic}} img{{max-width:100%}}</style></head>
<body><h1>kvbench leaderboard</h1>
<p>Critical KV footprint: the smallest KV footprint (% of full attention's) keeping {threshold:g} x full attention's
score (<code>&gt;</code>: even the largest footprint tried fell short, <code>&lt;</code>: the smallest passed). Rows in
italics are reported by the paper, not measured. Click a header to sort.</p>
{f"<p>{html.escape(note)}</p>" if note else ""}
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{image}
<script>
document.querySelectorAll("#board th").forEach((th, i) => th.addEventListener("click", () => {{
  const tbody = document.querySelector("#board tbody"), up = th.dataset.up !== "1";
  const key = tr => tr.children[i].dataset.sort;
  const rows = [...tbody.rows].sort((a, b) => {{
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // an empty cell last, either way
    const nx = Number(x), ny = Number(y);
    const c = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
    return up ? c : -c;
  }});
  th.dataset.up = up ? "1" : "0";
  rows.forEach(r => tbody.appendChild(r));
}}));
</script></body></html>
"""


def render(boards: list[GroupBoard], fmt: str, threshold: float, reported: bool = False) -> str:
    table = rows(boards, threshold, reported)
    if fmt == "md":
        return to_markdown(table, threshold, boards)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "json":
        return to_json(table, boards, threshold)
    if fmt == "html":
        return to_html(table, boards, threshold)
    raise ValueError(f"--format must be md, csv, json or html; got {fmt!r}")
