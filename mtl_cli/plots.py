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


def training_curves(metrics_jsonl: Path, out_png: Path, main_metrics: dict[str, str]) -> Path:
    """One panel per task: training loss (left axis) and validation main metric (right axis) by step.

    `main_metrics` maps task -> metric to draw (add "average": "main" to draw the average too).
    A star marks each task's best step (up to its stop), a dashed line the step it stopped early.
    Missing or null fields leave that curve out. Returns `out_png`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    records = _read_validation_records(metrics_jsonl)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["task"] != "average" or "average" in main_metrics:
            by_task.setdefault(rec["task"], []).append(rec)
    if not by_task:
        raise MtlError(f"no validation records to plot in {metrics_jsonl}")

    fig = Figure(figsize=(8, 2.8 * len(by_task) + 0.6), layout="constrained")
    # Drawing through an explicit Agg canvas: no pyplot, so no GUI backend and no global figure state.
    FigureCanvasAgg(fig)
    fig.suptitle(f"{metrics_jsonl.parent.name}: training loss and validation main metric per task")
    axes = fig.subplots(len(by_task), 1, squeeze=False)[:, 0]
    for ax, (task, recs) in zip(axes, by_task.items(), strict=True):
        recs = sorted(recs, key=lambda r: r["step"])
        metric = main_metrics.get(task)
        ax.set_title(task if metric is None else f"{task} ({metric})", loc="left")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)

        steps, losses = _series(recs, "train_loss")
        if steps:
            ax.plot(steps, losses, color="tab:blue", marker=".", label="train loss")
        ax.set_ylabel("train loss", color="tab:blue")

        stop_step = next((int(r["step"]) for r in recs if r.get("stopped") is True), None)
        if stop_step is not None:
            ax.axvline(stop_step, color="tab:red", linestyle="--", label=f"stopped (step {stop_step})")

        handles, labels = ax.get_legend_handles_labels()
        if metric is not None:
            right = ax.twinx()
            right.set_ylabel(f"validation {metric}", color="tab:orange")
            steps, scores = _series(recs, metric)
            if steps:
                right.plot(steps, scores, color="tab:orange", marker=".", label=f"validation {metric}")
                # Best up to the stop: later evals of a frozen head only reflect the drifting encoder.
                eligible = [(s, v) for s, v in zip(steps, scores, strict=True) if stop_step is None or s <= stop_step]
                if eligible:
                    # The first of equal maxima, as in TaskEarlyStopping: a tie is not an improvement.
                    best_step, best_score = max(eligible, key=lambda sv: (sv[1], -sv[0]))
                    right.plot(
                        [best_step], [best_score], linestyle="none", marker="*", markersize=14, color="tab:green",
                        label=f"best {best_score:.4g} (step {best_step})",
                    )  # fmt: skip
            more_handles, more_labels = right.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        if handles:
            ax.legend(handles, labels, loc="best", fontsize="small")

    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_with(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))  # whole, or one line
    return out_png
