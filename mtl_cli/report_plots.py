"""The figures of `mtl report`: panels that report.png lays out in one grid and report.html draws one
SVG each.

    sweep_panels     each task's main metric (and the average) against each swept key: validation
                     mean ± std over seeds (error bars, faint dots per seed), test dashed beside it
    curve_panels     by step, from each run's metrics.jsonl validation records: the main metric or
                     train_loss, one line per configuration (mean over seeds, a faint line per seed);
                     an `x` marks a record with `"forgetting": true`
    transfer_panels  a transfer study's single- and multi-task results per seed, mean ± std

Matplotlib through the object API on an Agg canvas (no pyplot, no global backend), imported here
only: the report's reading and its tables need none of it. Every string from a run file is drawn
as plain text (`_plain`), never as matplotlib mathtext.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mtl_cli.errors import MtlError
from mtl_cli.readers import read_jsonl
from mtl_cli.report import short_value
from mtl_cli.rundir import RunDir

TITLE_WIDTH = 44  # characters of a panel title per line
MAX_LINES = 5  # more combinations of the other swept keys than this: one line averaged over them
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]  # fmt: skip  (tab10 then tab20's light halves: the page's legend uses them too)


@dataclass
class Panel:
    title: str
    draw: Callable[[Any], None]  # draws onto one matplotlib Axes
    legend: Callable[[Any], None] | None = None  # the first panel of a group carries the group's legend


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def grid_columns(n: int) -> int:
    """Columns for n panels: 7 tasks and the average read as 4 x 2, never more than 4 across."""
    if n <= 3:
        return max(n, 1)
    return 2 if n == 4 else 3 if n in (5, 6, 9) else 4


def _plain(text: Any) -> str:
    """A label from a run file as plain text: `$` would start matplotlib's mathtext (and can fail)."""
    return str(text).replace("$", r"\$")


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _positions(values: list[Any]) -> tuple[dict[str, float], list[Any] | None]:
    """x position of each value (keyed by its JSON), and the categories in order when not numeric."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        return {json.dumps(v): float(v) for v in values}, None
    return {json.dumps(v): float(i) for i, v in enumerate(values)}, values


def _x_axis(ax: Any, key: str, values: list[Any], categories: list[Any] | None) -> None:
    if categories is None:
        finite = [v for v in values if v > 0]
        if len(finite) == len(values) and len(values) > 1 and max(finite) >= 10 * min(finite):
            ax.set_xscale("log")
            if len(values) <= 8:  # a few swept values: tick each one, as the tables write it
                ax.set_xticks(values, [_plain(short_value(v)) for v in values])
                ax.minorticks_off()
    else:
        turn = len(categories) > 4 or max((len(str(c)) for c in categories), default=0) > 10
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(
            [_plain(c) for c in categories], rotation=30 if turn else 0, ha="right" if turn else "center"
        )
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(_plain(key))


# --- the sweep ---------------------------------------------------------------------------------------


def sweep_panels(report: dict) -> dict[str, list[Panel]]:
    """{swept key: one panel per task and the average}; one group keyed "" when nothing but the seed is swept."""
    rows, swept = report["rows"], list(report["swept"])
    if not rows:
        return {}
    groups: dict[str, list[Panel]] = {}
    for key in swept or [""]:
        others = [k for k in swept if k != key]
        labels = {json.dumps([r["config"][k] for k in others]) for r in rows}
        averaged = len(labels) > MAX_LINES
        line_of = [
            "averaged over " + ", ".join(others)
            if averaged
            else " ".join(f"{k}={short_value(r['config'][k])}" for k in others)
            for r in rows
        ]
        lines = list(dict.fromkeys(line_of))
        values = report["swept"].get(key, ["all runs"])
        pos, categories = _positions(values)
        groups[key] = [
            Panel(
                f"{task} ({report['metrics'][task]})", _sweep_draw(report, task, key, pos, categories, line_of, lines)
            )
            for task in [*report["tasks"], "average"]
        ]
        groups[key][0].legend = lambda ax, n=len(lines): sweep_legend(ax, n)
    return groups


def _sweep_draw(report: dict, task: str, key: str, pos: dict, categories: Any, line_of: list[str], lines: list[str]):
    rows = report["rows"]
    values = report["swept"].get(key, ["all runs"])

    def x_of(row: dict) -> float:
        return pos[json.dumps(row["config"][key] if key else "all runs")]

    def draw(ax: Any) -> None:
        for li, line in enumerate(lines):
            members = [r for r, lab in zip(rows, line_of, strict=True) if lab == line]
            by_x: dict[float, dict[str, list[float]]] = {}
            for row in members:
                for split in ("validation", "test"):
                    vals = [v for v in row[split][task]["values"] if v is not None]
                    by_x.setdefault(x_of(row), {"validation": [], "test": []})[split].extend(vals)
            xs = sorted(x for x, v in by_x.items() if v["validation"])
            c = color(li)
            if xs:
                means, stds = zip(*(_stats(by_x[x]["validation"]) for x in xs), strict=True)
                ax.errorbar(xs, means, yerr=stds, color=c, marker="o", capsize=3, label=_plain(line or "validation"))
                dots = [(x, v) for x in xs for v in by_x[x]["validation"]]
                ax.scatter([d[0] for d in dots], [d[1] for d in dots], color=c, s=10, alpha=0.35, zorder=3)
            test_xs = sorted(x for x, v in by_x.items() if v["test"])
            if test_xs:
                ax.plot(test_xs, [_stats(by_x[x]["test"])[0] for x in test_xs], color=c, linestyle="--", marker="o",
                        markerfacecolor="none", alpha=0.7)  # fmt: skip
        best = report.get("best")
        if best and not any(lab.startswith("averaged") for lab in line_of):
            row = rows[best["row"]]
            mean = row["validation"][task]["mean"]
            if mean is not None:
                ax.plot([x_of(row)], [mean], marker="*", markersize=14, color="gold", markeredgecolor="black",
                        linestyle="none", zorder=4)  # fmt: skip
        _x_axis(ax, key or "(nothing swept but the seed)", values, categories)
        ax.set_ylabel(_plain(report["metrics"][task]))
        ax.grid(True, alpha=0.3)

    return draw


def sweep_legend(ax: Any, lines: int) -> None:
    """The lines (when more than one) and what the marks mean."""
    handles = list(ax.get_legend_handles_labels()[0]) if lines > 1 else []
    handles += [Line2D([], [], color="grey", marker="o", label="validation mean ± std"),
                Line2D([], [], color="grey", linestyle="--", marker="o", markerfacecolor="none", label="test mean"),
                Line2D([], [], color="gold", marker="*", markersize=12, markeredgecolor="black", linestyle="none",
                       label="best (on validation)")]  # fmt: skip
    ax.legend(handles=handles, fontsize="x-small")


# --- training curves ----------------------------------------------------------------------------------


def read_curves(report: dict) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    """{run: {task: [{"step", "metric", "train_loss", "forgetting"}]}} from each run's metrics.jsonl
    validation records (sorted by step), and a note for each run whose file could not be used."""
    metrics = report["metrics"]
    curves: dict[str, dict[str, list[dict]]] = {}
    notes = []
    for run in report["runs"]:
        path = RunDir(Path(run["path"])).metrics
        if not path.exists() and not path.is_symlink():
            continue  # no file, nothing to draw: not a fault of the run
        try:  # the checked reader: a plain file, bounded; lines that are not JSON objects are skipped
            records = read_jsonl(path)
        except MtlError as err:
            notes.append(f"{run['run']}: metrics.jsonl {getattr(err, 'reason', 'cannot be read')}")
            continue
        per_task: dict[str, list[dict]] = {}
        for rec in records:
            task, step = rec.get("task"), rec.get("step")
            if rec.get("split", "validation") != "validation" or type(step) is not int or not isinstance(task, str):
                continue
            if task not in metrics:
                continue
            per_task.setdefault(task, []).append({
                "step": step, "metric": _finite(rec.get(metrics[task])), "train_loss": _finite(rec.get("train_loss")),
                "forgetting": rec.get("forgetting") is True,
            })  # fmt: skip
        if not per_task:
            notes.append(f"{run['run']}: no validation records in metrics.jsonl")
        curves[run["run"]] = {t: sorted(recs, key=lambda r: r["step"]) for t, recs in per_task.items()}
    return curves, notes


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def curve_panels(report: dict, curves: dict, field: str) -> list[Panel]:
    """One panel per task (`field` "metric": and the average; "train_loss": tasks only) with a line
    per configuration; empty when no run has that field."""
    tasks = [*report["tasks"], "average"] if field == "metric" else report["tasks"]
    panels = []
    for task in tasks:
        have = any(r[field] is not None for c in curves.values() for r in c.get(task, []))
        if have:
            name = report["metrics"][task] if field == "metric" else "train loss"
            panels.append(Panel(f"{task} ({name})", _curve_draw(report, curves, task, field, name)))
    if panels and len(report["rows"]) <= 3:  # more lines: the page's legend names them, a panel's would hide them
        panels[0].legend = default_legend
    return panels


def _curve_draw(report: dict, curves: dict, task: str, field: str, name: str):
    def draw(ax: Any) -> None:
        forgot = False
        for i, row in enumerate(report["rows"]):
            c = color(i)
            by_step: dict[int, list[float]] = {}
            for run in row["runs"]:
                recs = [r for r in curves.get(run, {}).get(task, []) if r[field] is not None]
                if not recs:
                    continue
                steps, values = [r["step"] for r in recs], [r[field] for r in recs]
                for s, v in zip(steps, values, strict=True):
                    by_step.setdefault(s, []).append(v)
                if row["n"] > 1:
                    ax.plot(steps, values, color=c, alpha=0.3, linewidth=0.8)
                marks = [(r["step"], r[field]) for r in recs if r["forgetting"]]
                if marks:
                    forgot = True
                    ax.scatter([m[0] for m in marks], [m[1] for m in marks], marker="x", color="red", s=36, zorder=4)
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [statistics.mean(by_step[s]) for s in steps], color=c, linewidth=1.6, marker=".",
                        label=_plain(row["label"]))  # fmt: skip
        if forgot:
            ax.scatter([], [], marker="x", color="red", label="forgetting")
        ax.set_xlabel("step")
        ax.set_ylabel(_plain(name))
        ax.grid(True, alpha=0.3)

    return draw


# --- a transfer study ------------------------------------------------------------------------------


def transfer_panels(transfer: dict) -> list[Panel]:
    panels = [Panel(f"{r['task']} ({r['metric']})", _transfer_draw(transfer, r)) for r in transfer["rows"]]
    if panels:
        panels[0].legend = default_legend
    return panels


def _transfer_draw(transfer: dict, row: dict):
    def draw(ax: Any) -> None:
        seeds = transfer["per_seed"].get(row["task"], {})
        for x, arm, c in ((0, "single", "#9aa5b1"), (1, "multi", "#2f6db3")):
            points = [v for v in seeds.get(arm, []) if v is not None]
            spread = [x + 0.12 * (j - (len(points) - 1) / 2) / max(len(points), 1) for j in range(len(points))]
            ax.scatter(spread, points, color=c, s=22, alpha=0.8, zorder=3, label=f"{arm}-task, per seed")
            std = row[f"{arm}_std"] or 0.0
            ax.errorbar([x + 0.22], [row[f"{arm}_mean"]], yerr=[std], color="black", marker="_", markersize=14,
                        capsize=4, zorder=4)  # fmt: skip
        p = "one seed" if row["p_value"] is None else f"p={row['p_value']:.3f}"
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["single-task", "multi-task"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_xlabel(f"difference {row['difference']:+.4f} ({p}{', significant' if row['significant'] else ''})")
        ax.set_ylabel(_plain(f"test {row['metric']}"))
        ax.grid(True, axis="y", alpha=0.3)

    return draw


# --- figures -----------------------------------------------------------------------------------------


def _title(text: str) -> str:
    """A panel title wrapped to the panel's width: a long task name must not run off it."""
    return "\n".join(textwrap.wrap(_plain(text), TITLE_WIDTH, break_long_words=True, break_on_hyphens=False))


def _draw(ax: Any, panel: Panel) -> None:
    panel.draw(ax)
    ax.set_title(_title(panel.title), fontsize="medium")
    if panel.legend is not None:
        panel.legend(ax)


def default_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles and len(handles) <= 10:  # more lines than that: the page's table is the legend
        ax.legend(fontsize="x-small")


def grid_figure(sections: list[tuple[str, list[Panel]]]) -> Figure:
    """One subfigure per section (titled), its panels in a grid of the same columns for all."""
    sections = [(title, panels) for title, panels in sections if panels]
    ncols = grid_columns(max((len(p) for _, p in sections), default=1))
    heights = [math.ceil(len(p) / ncols) for _, p in sections] or [1]
    fig = Figure(figsize=(4.0 * ncols, 3.2 * sum(heights) + 0.5 * len(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    subfigures = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (title, panels), rows in zip(subfigures, sections, heights, strict=False):
        sub.suptitle(_plain(title), x=0.01, ha="left", fontweight="bold", fontsize="medium")
        grid = sub.add_gridspec(rows, ncols)
        for i, panel in enumerate(panels):
            _draw(sub.add_subplot(grid[i // ncols, i % ncols]), panel)
    return fig


def report_png(report: dict, path: Path) -> None:
    """report.png: the sweep panels (a row of panels per swept key), then a transfer study's."""
    sections = [
        (f"validation (test dashed) against {key}" if key else "validation (test dashed), seeds only", panels)
        for key, panels in sweep_panels(report).items()
    ]
    if report.get("transfer"):
        sections.append(("transfer: single- vs multi-task, per seed", transfer_panels(report["transfer"])))
    fig = grid_figure(sections)
    fig.savefig(path, dpi=90, format="png")


def panel_svg(panel: Panel) -> str:
    """One panel as an inline `<svg>` element: text kept as text (small, selectable), no date stamp."""
    with rc_context({"svg.fonttype": "none"}):
        fig = Figure(figsize=(4.4, 3.2))
        FigureCanvasAgg(fig)
        # Fixed margins, not a layout engine: that draws every panel twice, and a page has dozens.
        fig.subplots_adjust(left=0.2, right=0.97, top=0.9 - 0.055 * _title(panel.title).count("\n"), bottom=0.2)
        _draw(fig.add_subplot(), panel)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # the XML prolog and DOCTYPE have no place inside HTML
