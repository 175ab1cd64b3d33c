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

from kvbench.scoring import GroupBoard, split_label

COLUMNS = ("source", "model", "context_length", "chunk_size", "category", "method", "query", "critical_footprint",
           "mark", "critical", "peak_at_critical", "peak_bytes_at_critical", "baseline_score", "threshold")


def reported_table() -> dict:
    return json.loads(resources.files("kvbench.data").joinpath("paper_table2.json").read_text())


def rows(boards: list[GroupBoard], threshold: float, reported: bool = False) -> list[dict]:
    """One row per (group, category, method): the long form every format is made from."""
    out = []
    for board in boards:
        for category, cb in board.categories.items():
            for label, c in sorted(cb.critical.items()):
                method, query = split_label(label)
                out.append({"source": "measured", "model": board.model, "context_length": board.context_length,
                            "chunk_size": board.chunk_size, "category": category, "method": method, "query": query,
                            "critical_footprint": c.value, "mark": c.mark, "critical": str(c),
                            "peak_at_critical": c.peak, "peak_bytes_at_critical": c.peak_bytes,
                            "baseline_score": cb.baseline, "threshold": threshold})
    if reported:
        paper = reported_table()
        for method, values in paper["rows"].items():
            for category, value in zip(paper["categories"], values, strict=True):
                mark = value[0] if value[0] in "<>" else ""
                out.append({"source": "reported (arXiv 2506.17121, Table 2)", "model": paper["model"],
                            "context_length": paper["context_length"], "chunk_size": paper["chunk_size"],
                            "category": category, "method": method, "query": "aware",
                            "critical_footprint": float(value.lstrip("<>")) / 100, "mark": mark,
                            "critical": f"{value}%", "peak_at_critical": None, "peak_bytes_at_critical": None,
                            "baseline_score": None, "threshold": paper["threshold"]})
    return out


def _wide(table: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """Method rows x category columns per (source, group), as the paper's Table 2. Columns are (category, query
    mode): with query-agnostic runs, a pair per category, the two modes side by side."""
    categories = list(dict.fromkeys(r["category"] for r in table))
    columns = sorted({(r["category"], r["query"]) for r in table},  # categories in table order, aware first
                     key=lambda c: (categories.index(c[0]), c[1] != "aware", c[1]))
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


def to_markdown(table: list[dict], threshold: float) -> str:
    columns, grid = _wide(table)
    lines = [f"Critical KV footprint: the smallest KV footprint (% of full attention's) keeping "
             f"{threshold:g} x full attention's score; `>` never reached, `<` the smallest run passed. "
             "Then the peak at that footprint: entries held at once (% of the tokens) / physical KV bytes.", ""]
    if any(query != "aware" for _, query in columns):
        lines += ["(aware): the question prefilled with its context; (agnostic): the context prefilled and evicted "
                  "before the question is known (query=agnostic).", ""]
    names = [_column_name(c, columns) for c in columns]
    for (source, model, context_length, chunk_size), methods in grid.items():
        peaks = source == "measured"
        header = names + ([f"{name} peak" for name in names] if peaks else [])
        lines += [f"### {model}, context {context_length}, chunk {chunk_size} ({source})", "",
                  "| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for method, cells in methods.items():
            name = f"{method} (reported)" if source != "measured" else method
            values = [cells[c]["critical"] if c in cells else "—" for c in columns]
            values += [_peaks(cells.get(c)) for c in columns] if peaks else []
            lines.append(f"| {_md(name)} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_json(table: list[dict], boards: list[GroupBoard], threshold: float) -> str:
    runs = [{"model": b.model, "context_length": b.context_length, "chunk_size": b.chunk_size,
             "category": c, "baseline_score": cb.baseline, "method": p.method, "params": p.params,
             "score": p.score, "footprint": p.footprint, "peak": p.peak, "peak_bytes": p.peak_bytes, "files": list(p.files)}
            for b in boards for c, cb in b.categories.items() for p in cb.points]
    return json.dumps({"threshold": threshold, "critical": table, "runs": runs}, indent=1, default=str)


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
    look = {base: dict(marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                       color=colours[i % len(colours)], markersize=9 - 4 * i / max(len(bases) - 1, 1),
                       markerfacecolor="none", markeredgewidth=1.5)
            for i, base in enumerate(bases)}
    out = {}
    for label in labels:
        base, query = split_label(label)
        out[label] = dict(look[base])
        if query == "agnostic":
            out[label].update(linestyle=(0, (1, 1.5)), markerfacecolor=look[base]["color"],
                              markersize=0.6 * look[base]["markersize"])
    return out


def figure(boards: list[GroupBoard], threshold: float):
    """Score against footprint per category (one panel each), one line per method, the threshold dashed.

    Every method keeps one style across the panels: its own marker and line style (and colour), hollow markers
    shrinking down the legend, so that methods whose curves coincide (two head patterns learned alike) still show
    both. The legend sits below the panels, off the data; the threshold line is labelled with its own value.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    panels = [(b, cb) for b in boards for cb in b.categories.values()]
    if not panels:
        raise ValueError("nothing to plot: no scored runs")
    methods = sorted({p.method for _, cb in panels for p in cb.points})
    style = styles(methods)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for ax, (board, cb) in zip(axes[0], panels, strict=True):
        for method in methods:
            points = sorted((p for p in cb.points if p.method == method), key=lambda p: p.footprint)
            if points:
                ax.plot([100 * p.footprint for p in points], [p.score for p in points], label=method,
                        **style[method])
        ax.axhline(cb.target, color="grey", linestyle=(0, (5, 5)), linewidth=1,
                   label=f"{threshold:g} x full = {cb.target:.3g}")
        ax.annotate(f"{threshold:g} x full = {cb.target:.3g}", (1, cb.target), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize="x-small", color="grey")
        ax.set(title=f"{cb.category} — {board.model.rsplit('/', 1)[-1]}, chunk {board.chunk_size}",
               xlabel="KV footprint (% of full)", ylabel="score")
    handles = [plt.Line2D([], [], label=m, **style[m]) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 4), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(methods) - 1) // 4), 1, 1))
    return fig


def plot(boards: list[GroupBoard], path_or_buffer, threshold: float) -> None:
    import matplotlib.pyplot as plt

    fig = figure(boards, threshold)
    fig.savefig(path_or_buffer, format="png", dpi=90)
    plt.close(fig)


def to_html(table: list[dict], boards: list[GroupBoard], threshold: float) -> str:
    """One self-contained page: a table sortable by clicking a header, the plots embedded as PNG data."""
    shown = ("source", "model", "context_length", "chunk_size", "category", "method", "query", "critical",
             "peak_at_critical", "peak_bytes_at_critical", "baseline_score")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = []
    for r in table:
        cells = []
        for c in shown:
            value = r[c]
            # sort by the number behind "<34%" / ">93%", not the text
            key = r["critical_footprint"] if c == "critical" else value
            text = "—" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            cells.append(f'<td data-sort="{html.escape(str(key), quote=True)}">{html.escape(text)}</td>')
        css = ' class="reported"' if r["source"] != "measured" else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    image = ""
    if any(b.categories for b in boards):
        buffer = io.BytesIO()
        plot(boards, buffer, threshold)
        image = f'<img alt="score vs KV footprint" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kvbench leaderboard</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}
th{{cursor:pointer;background:#eee}} tr.reported{{color:#666;font-style:italic}} img{{max-width:100%}}</style></head>
<body><h1>kvbench leaderboard</h1>
<p>Critical KV footprint: the smallest KV footprint keeping {threshold:g} x full attention's score
(<code>&gt;</code> never reached, <code>&lt;</code> the smallest run passed). Rows in italics are reported by the
paper, not measured. Click a header to sort.</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{image}
<script>
document.querySelectorAll("#board th").forEach((th, i) => th.addEventListener("click", () => {{
  const tbody = document.querySelector("#board tbody"), up = th.dataset.up !== "1";
  const key = tr => tr.children[i].dataset.sort, num = v => parseFloat(v);
  const rows = [...tbody.rows].sort((a, b) => {{
    const x = key(a), y = key(b), nx = num(x), ny = num(y);
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
        return to_markdown(table, threshold)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "json":
        return to_json(table, boards, threshold)
    if fmt == "html":
        return to_html(table, boards, threshold)
    raise ValueError(f"--format must be md, csv, json or html; got {fmt!r}")
