"""The footprint views: what the paper argues with pictures, and the checks it leaves open, from result files.

- `trace_figure`: KV held over time for one sample of several runs (the paper's figure): each line the entries
  held per layer and KV head, rising over a prefill chunk as its tokens are appended and dropping where the method
  evicts, the area under it shaded (its area is the footprint), its peak marked.
- `threshold_table`: the critical footprint of every method at several thresholds (85%, 90%, 95% of full
  attention's score) and its rank at each, so that ranking changes stand out.
- `chunks_figure`: the critical footprint against the prefill chunk size, per method and category, each point on
  its bootstrap interval (where the runs carry per-sample results).
- `memory_figure`: what was measured (peak physical bytes, tokens per second) against the idealised footprint and
  peak, per setting and task, with their correlation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from kvbench import scoring
from kvbench.statistics import DEFAULT_REPLICATES, DEFAULT_SEED, Interval

# ---- KV held over time ----


def _run_label(kv: dict) -> str:
    """The method and the parameters it runs with that differ from its defaults: "snapkv (keep=0.1, ...)". The
    schedule is always named, since post-fill and chunked runs of one method are the figure's contrast."""
    params = scoring.with_defaults(kv["method"], {})
    given = kv.get("method_params", {})
    changed = [f"{k}={v}" for k, v in given.items() if params.get(k, v) != v or k == "schedule"]
    if "schedule" in params and "schedule" not in given:
        changed.insert(0, f"schedule={params['schedule']}")
    return f"{kv['method']} ({', '.join(changed)})" if changed else kv["method"]


def traces(paths, task: str | None = None, sample: int = 0) -> list[dict]:
    """For every results file under `paths` whose folder holds samples of `task` (the first task found if None)
    with traces: {label, footprint, peak, points} of its sample with doc_id `sample`."""
    found = []
    for results_path in scoring.find_result_files(paths):
        kv = json.loads(results_path.read_text()).get("config", {}).get("kvbench")
        if not kv:
            continue
        for samples_path in sorted(results_path.parent.glob("samples_*.jsonl")):
            name = samples_path.stem.removeprefix("samples_")
            if task is not None and not name.startswith(task):
                continue
            for line in samples_path.read_text().splitlines():
                row = json.loads(line)
                if row.get("doc_id") == sample and row.get("kv_trace"):
                    found.append(
                        {
                            "label": _run_label(kv),
                            "task": row.get("doc", {}).get("task", name),
                            "footprint": row["kv_footprint"],
                            "peak": row["kv_peak"],
                            "points": row["kv_trace"],
                        }
                    )
                    task = task or name
                    break
    if not found:
        raise ValueError("no traced samples found: run with trace=true in --model_args (lm_eval: and --log_samples)")
    return sorted(found, key=lambda t: t["label"])


def trace_figure(paths, task: str | None = None, sample: int = 0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvbench.leaderboard import styles

    runs = traces(paths, task, sample)
    style = styles([run["label"] for run in runs])
    fig, ax = plt.subplots(figsize=(9, 5.5 + 0.25 * len(runs)))
    for order, run in enumerate(runs):
        xs, ys, held = [0], [0.0], 0.0
        for point in run["points"]:  # a chunk's tokens are appended one after another, then the method evicts
            start = point["tokens"] - point["new"]
            xs += [start, point["tokens"], point["tokens"]]
            ys += [held, point["held_peak"], point["held"]]
            held = point["held"]
        peak = max(run["points"], key=lambda p: p["held_peak"])
        line_style = {k: v for k, v in style[run["label"]].items() if not k.startswith("marker")}
        label = f"{run['label']}: footprint {100 * run['footprint']:.0f}%, peak {100 * run['peak']:.0f}%"
        # Lines drawn later are thinner and on top, so a line that coincides with an earlier one (full and
        # post-fill over the whole prefill) shows as a thin line inside a thick one, both visible.
        width = 1.2 + 3.6 * (len(runs) - 1 - order) / max(len(runs) - 1, 1)
        [line] = ax.plot(xs, ys, label=label, linewidth=width, zorder=2 + order, **line_style)
        ax.fill_between(xs, ys, alpha=0.08, color=line.get_color())
        ax.plot(
            [peak["tokens"]],
            [peak["held_peak"]],
            marker=style[run["label"]]["marker"],
            markersize=10,
            markerfacecolor="none",
            markeredgewidth=1.5,
            color=line.get_color(),
        )
    ax.set(
        title=f"KV held over one request ({runs[0]['task']}, sample {sample}); marker: the peak",
        xlabel="tokens processed",
        ylabel="KV entries held (per layer and KV head)",
    )
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    return fig


# ---- several thresholds ----

# Ranks: the range of places a method is not separated from (kvbench.statistics), among the methods run in the same
# query mode (a query-agnostic run competes with query-agnostic runs).


def threshold_table(runs, thresholds: list[float], **statistics) -> list[dict]:
    """One row per (group, category, method): its critical footprint, interval and rank range at each threshold.
    `statistics`: score_runs' level, replicates and seed."""
    from kvbench.leaderboard import cell_text, rows

    table: dict = {}
    for threshold in thresholds:
        for row in rows(scoring.score_runs(runs, threshold, **statistics), threshold):
            key = (row["model"], row["context_length"], row["chunk_size"], row["category"], row["method"], row["query"])
            label = row["method"] + (scoring.AGNOSTIC if row["query"] == "agnostic" else "")
            out = table.setdefault(
                key,
                {
                    "model": row["model"],
                    "context_length": row["context_length"],
                    "chunk_size": row["chunk_size"],
                    "category": row["category"],
                    "method": label,
                    "query": row["query"],
                    "n": row["n"],
                    "critical": {},
                    "interval": {},
                    "rank": {},
                },
            )
            out["critical"][f"{threshold:g}"] = cell_text(row)
            out["interval"][f"{threshold:g}"] = [row["ci_low"], row["ci_high"]]
            out["rank"][f"{threshold:g}"] = row["rank"]
    result = list(table.values())
    for row in result:
        row["rank_changes"] = len(set(row["rank"].values())) > 1
    return result


def threshold_markdown(rows: list[dict], thresholds: list[float], statistics: dict | None = None) -> str:
    names = [f"{t:g}" for t in thresholds]
    lines = [
        f"Critical KV footprint at {', '.join(names)} x full attention's score, its interval and each method's "
        "rank range (1 = the smallest footprint; a range covers the places a method is not separated from); ↕ "
        "marks a method whose rank range changes with the threshold."
    ]
    if statistics and statistics.get("replicates"):
        lines[0] += (
            f" {100 * statistics['level']:g}% intervals from {statistics['replicates']} paired bootstrap "
            f"replicates over samples (seed {statistics['seed']})."
        )
    lines.append("")
    groups = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["query"] != "aware"):
        groups[(row["model"], row["context_length"], row["chunk_size"], row["category"], row["query"])].append(row)
    agnostic = any(query != "aware" for *_, query in groups)
    middle = names[len(names) // 2]

    def order(row):  # by the middle threshold's rank range, then footprint; no rank last
        rank = row["rank"].get(middle)
        return (rank is None, [int(x) for x in rank.split("–")] if rank else [], row["method"])

    for (model, length, chunk, category, query), members in sorted(groups.items(), key=lambda g: g[0][:4]):
        mode = f" (query-{query})" if agnostic else ""
        n = sorted({str(r["n"]) for r in members if r["n"] is not None})
        lines += [
            f"### {model}, context {length}, chunk {chunk}: {category}{mode}" + (f" (n = {'/'.join(n)})" if n else ""),
            "",
            "| method | " + " | ".join(f"{n} x full (rank)" for n in names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for row in sorted(members, key=order):
            cells = [f"{row['critical'].get(n, '—')} ({row['rank'].get(n) or '—'})" for n in names]
            lines.append(f"| {row['method']}{' ↕' if row['rank_changes'] else ''} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ---- chunk sizes ----


@dataclass(frozen=True)
class ChunkPoint:
    """One method's critical footprint at one chunk size, its interval (None without per-sample results) and the
    footprints it tried there (where an open end of the interval stops on the figure)."""

    chunk: int
    critical: scoring.Critical
    interval: Interval | None
    tried: tuple[float, float]


def chunk_curves(runs, threshold: float, replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED) -> dict:
    """{(model, context length, category): {method: [ChunkPoint, ...]}} from runs at several chunk sizes, ascending."""
    curves: dict = defaultdict(lambda: defaultdict(list))
    for board in scoring.score_runs(runs, threshold, replicates=replicates, seed=seed):
        for category, cb in board.categories.items():
            for method, critical in cb.critical.items():
                tried = [p.footprint for p in cb.points if p.method == method]
                point = ChunkPoint(board.chunk_size, critical, cb.interval.get(method), (min(tried), max(tried)))
                curves[(board.model, board.context_length, category)][method].append(point)
    return {
        key: {m: sorted(points, key=lambda p: p.chunk) for m, points in methods.items()}
        for key, methods in curves.items()
    }


def chunks_figure(runs, threshold: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvbench.leaderboard import styles

    curves = chunk_curves(runs, threshold)
    if not curves:
        raise ValueError("nothing to plot: no scored runs")
    style = styles(sorted({m for methods in curves.values() for m in methods}))
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 4.2), squeeze=False)
    for ax, ((model, length, category), methods) in zip(axes[0], sorted(curves.items()), strict=True):
        for method, points in methods.items():
            ax.plot([p.chunk for p in points], [100 * p.critical.value for p in points], **style[method])
            _interval_bars(ax, points, style[method]["color"])
            for p in points:  # ">": never reached (drawn at its largest run), "<": at most this
                if p.critical.mark:
                    ax.annotate(
                        p.critical.mark,
                        (p.chunk, 100 * p.critical.value),
                        textcoords="offset points",
                        xytext=(5, 2),
                        fontsize="small",
                    )
        chunk_sizes = sorted({p.chunk for points in methods.values() for p in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(chunk_sizes, [str(c) for c in chunk_sizes])  # the sizes tried, written out, not as 2^k
        ax.minorticks_off()
        ax.set(
            title=f"{category} — {model.rsplit('/', 1)[-1]}, context {length}",
            xlabel="prefill chunk size (tokens)",
            ylabel=f"critical KV footprint at {threshold:g} x full (%)",
        )
    handles = [plt.Line2D([], [], label=m, **style[m]) for m in style]
    handles.append(
        plt.Line2D(
            [],
            [],
            linestyle="none",
            label="<: passed at its smallest run;  >: never reached (drawn at its largest run);  bars: 95% "
            "intervals (an open end stops at the footprint tried)",
        )
    )
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // 5), 1, 1))
    return fig


def _interval_bars(ax, points: list[ChunkPoint], color) -> None:
    """Each point's interval as a vertical bar; an open end (past the footprints tried) stops at the footprint
    tried there. A bar never reaches back past its point (a percentile interval need not contain it)."""
    shown = [p for p in points if p.interval is not None]
    if not shown:
        return
    lows, highs = zip(*(p.interval.on_axis(*p.tried) for p in shown), strict=True)
    ax.errorbar(
        [p.chunk for p in shown],
        [100 * p.critical.value for p in shown],
        yerr=[
            [max(100 * (p.critical.value - low), 0) for p, low in zip(shown, lows, strict=True)],
            [max(100 * (high - p.critical.value), 0) for p, high in zip(shown, highs, strict=True)],
        ],
        fmt="none",
        ecolor=color,
        elinewidth=0.8,
        capsize=2,
        alpha=0.6,
    )


# ---- measured memory and speed against the idealised footprint ----


def memory_points(paths) -> list[dict]:
    """One point per (results file, task): the idealised footprint and peak, the measured peak bytes (the mean
    over the task's requests of each request's largest physical KV), and the run's tokens per second."""
    points = []
    for path in scoring.find_result_files(paths):
        kv = json.loads(path.read_text()).get("config", {}).get("kvbench")
        if not kv:
            continue
        for task, tally in kv.get("tasks", {}).items():
            points.append(
                {
                    "label": kv["method"],
                    "task": task,
                    "footprint": tally["kv_footprint"],
                    "peak": tally["kv_peak"],
                    "peak_bytes": tally["kv_peak_bytes"],
                    "tokens_per_second": kv.get("tokens_per_second"),
                }
            )
    if len(points) < 2:
        raise ValueError("need at least two results (a settings sweep) to relate measured to idealised figures")
    return points


def correlation(xs, ys) -> float:
    import numpy

    return float(numpy.corrcoef(xs, ys)[0, 1])


def memory_figure(paths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvbench.leaderboard import styles

    points = memory_points(paths)
    style = styles(sorted({p["label"] for p in points}))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (
        (
            left,
            "peak",
            "peak_bytes",
            2**20,
            "idealised peak (entries held at once, % of tokens)",
            "measured peak KV memory (MiB, mean per request)",
        ),
        (
            right,
            "footprint",
            "tokens_per_second",
            1,
            "idealised KV footprint (%)",
            "measured tokens per second (whole run)",
        ),
    )
    for ax, x_key, y_key, scale, x_label, y_label in panels:
        chosen = [p for p in points if p[y_key] is not None]
        for label in style:
            mine = [p for p in chosen if p["label"] == label]
            ax.plot(
                [100 * p[x_key] for p in mine],
                [p[y_key] / scale for p in mine],
                linestyle="none",
                label=label,
                **{k: v for k, v in style[label].items() if k != "linestyle"},
            )
        r = correlation([p[x_key] for p in chosen], [p[y_key] for p in chosen])
        ax.set(xlabel=x_label, ylabel=y_label, title=f"Pearson r = {r:.2f} over {len(chosen)} (setting, task) points")
    handles = [
        plt.Line2D([], [], label=m, linestyle="none", **{k: v for k, v in style[m].items() if k != "linestyle"})
        for m in style
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(style), 5), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(style) - 1) // 5), 1, 1))
    return fig


def save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
