"""Training curves of a run, drawn from its `metrics.jsonl`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError
from mtl_cli.writers import write_with


def _read_validation_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a blank line, or a line cut short by a run that was killed mid-write
        if isinstance(rec, dict) and "task" in rec and "step" in rec and rec.get("split", "validation") == "validation":
            records.append(rec)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: list[dict[str, Any]], field: str) -> tuple[list[int], list[float]]:
    points = [(int(r["step"]), _number(r.get(field))) for r in records]
    return [s for s, v in points if v is not None], [v for _, v in points if v is not None]


def training_curves(
    metrics_jsonl: Path, out_png: Path, main_metrics: dict[str, str], best_steps: dict[str, int] | None = None
) -> Path:
    """One panel per task: training loss (left axis) and validation main metric (right axis) by step.

    `main_metrics` maps task -> metric to draw (add "average": "main" to draw the average too).
    `best_steps` maps task -> the step of the checkpoint its final figures come from (checkpoints/best,
    or its own best-<task> with early stopping); without it, the run's best step as training chose
    it (the first highest average `main`). A dashed line marks it on each panel, a dotted one the
    step a task stopped early; red rings the evaluations in a forgetting episode (`forgetting: true`).
    Missing or null fields leave that curve out. Returns `out_png`.
    """
    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    fig = curves_figure(metrics_jsonl, main_metrics, best_steps)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_with(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))  # whole, or one line
    return out_png


# Columns of the panel grid: one for a task or two, then up to three, so that 7 tasks take 3 rows.
def grid(panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid for `panels` panels."""
    cols = 1 if panels == 1 else 2 if panels <= 4 else 3
    return math.ceil(panels / cols), cols


def run_best_step(records: list[dict[str, Any]]) -> int | None:
    """The step checkpoints/best was saved at, as evaluate_and_save chose it with trainer.best_metric=main:
    the first evaluation with the highest average `main` (a tie is not an improvement)."""
    points = [(int(r["step"]), _number(r.get("main"))) for r in records if r["task"] == "average"]
    scored = [(s, v) for s, v in points if v is not None]
    return max(scored, key=lambda sv: (sv[1], -sv[0]))[0] if scored else None


def curves_figure(metrics_jsonl: Path, main_metrics: dict[str, str], best_steps: dict[str, int] | None = None) -> Any:
    """The matplotlib Figure `training_curves` saves (see there)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = _read_validation_records(metrics_jsonl)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["task"] != "average" or "average" in main_metrics:
            by_task.setdefault(rec["task"], []).append(rec)
    if not by_task:
        raise MtlError(f"no validation records to plot in {metrics_jsonl}")
    if best_steps is None:
        found = run_best_step(records)
        best_steps = {} if found is None else dict.fromkeys(by_task, found)

    nrows, ncols = grid(len(by_task))
    fig = Figure(figsize=(5.6 * ncols, 3.2 * nrows + 0.6), layout="constrained")
    # Drawing through an explicit Agg canvas: no pyplot, so no GUI backend and no global figure state.
    FigureCanvasAgg(fig)
    fig.suptitle(f"{metrics_jsonl.parent.name}: training loss and validation main metric per task")
    grid_axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid_axes[len(by_task) :]:
        ax.set_visible(False)  # the last row's empty cells
    for ax, (task, recs) in zip(grid_axes, by_task.items(), strict=False):
        _panel(ax, task, sorted(recs, key=lambda r: r["step"]), main_metrics.get(task), best_steps.get(task))
    return fig


def _panel(ax: Any, task: str, recs: list[dict[str, Any]], metric: str | None, best_step: int | None) -> None:
    ax.set_title(task if metric is None else f"{task} ({metric})", loc="left", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)

    steps, losses = _series(recs, "train_loss")
    if steps:
        ax.plot(steps, losses, color="tab:blue", marker=".", label="train loss")
    ax.set_ylabel("train loss", color="tab:blue")

    stop_step = next((int(r["step"]) for r in recs if r.get("stopped") is True), None)
    if stop_step is not None:
        ax.axvline(stop_step, color="tab:gray", linestyle=":", label=f"stopped (step {stop_step})")
    if best_step is not None:
        ax.axvline(best_step, color="tab:green", linestyle="--", label=f"best checkpoint (step {best_step})")

    handles, labels = ax.get_legend_handles_labels()
    if metric is not None:
        right = ax.twinx()
        right.set_ylabel(f"validation {metric}", color="tab:orange")
        points = [(int(r["step"]), _number(r.get(metric)), r.get("forgetting") is True) for r in recs]
        points = [(s, v, f) for s, v, f in points if v is not None]
        if points:
            right.plot([s for s, _, _ in points], [v for _, v, _ in points], color="tab:orange", marker=".",
                       label=f"validation {metric}")  # fmt: skip
            at_best = [v for s, v, _ in points if s == best_step]
            if at_best:
                right.plot([best_step], at_best, linestyle="none", marker="*", markersize=13, color="tab:green",
                           label=f"{at_best[0]:.4f} at the best checkpoint")  # fmt: skip
            forgotten = [(s, v) for s, v, f in points if f]
            if forgotten:
                right.plot([s for s, _ in forgotten], [v for _, v in forgotten], linestyle="none", marker="o",
                           markersize=9, markerfacecolor="none", markeredgecolor="tab:red", markeredgewidth=1.5,
                           label="forgetting episode")  # fmt: skip
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        ax.legend(handles, labels, loc="best", fontsize="x-small")
