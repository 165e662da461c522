"""The plots, read from their matplotlib Figures rather than pixels: curves.png's grid, its best-checkpoint
line and forgetting marks; the affinity heatmaps' colour scale; transfer.png's axis and per-seed points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection

from mtl_cli.affinity import AffinityRecorder
from mtl_cli.plots import curves_figure, training_curves
from mtl_cli.transfer import bar_chart

TASKS = [f"task{i}" for i in range(7)]
STEPS = [10, 20, 30, 40, 50]


def write_metrics(path: Path) -> Path:
    """7 tasks; each peaks on its own (task0 at step 20), the average (what picks checkpoints/best) at 40."""
    records = []
    for step in STEPS:
        scores = {t: 0.5 + 0.01 * i + (0.2 if (step == 20 and t == "task0") else 0.1 * (step == 40)) for i, t in
                  enumerate(TASKS)}  # fmt: skip
        for t, v in scores.items():
            flagged = t == "task0" and step in (30, 50)  # below task0's best by more than a threshold
            records.append({"step": step, "split": "validation", "task": t, "accuracy": v, "train_loss": 1 / step,
                            "forgetting": flagged})  # fmt: skip
        records.append({"step": step, "split": "validation", "task": "average", "main": sum(scores.values()) / 7})
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def panels(fig) -> list:
    """The visible task panels (the left axes of each twin pair), in order."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title(loc="left")]


def test_seven_tasks_in_a_grid_of_three_columns(tmp_path: Path) -> None:
    fig = curves_figure(write_metrics(tmp_path / "metrics.jsonl"), dict.fromkeys(TASKS, "accuracy"))
    shown = panels(fig)
    assert [ax.get_title(loc="left") for ax in shown] == [f"{t} (accuracy)" for t in TASKS]
    grid = {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in shown}
    assert grid == {(r, c) for r in range(3) for c in range(3)} - {(2, 1), (2, 2)}
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(hidden) == 2  # the empty cells of the last row
    width, height = fig.get_size_inches()
    assert width >= 15 and height < 12  # 3 x 3 panels, not 7 stacked


def best_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label().startswith("best checkpoint")]


def test_every_panel_marks_the_runs_best_step_not_its_own_maximum(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    fig = curves_figure(metrics, dict.fromkeys(TASKS, "accuracy"))  # no best_steps: the run's, from the average
    for ax in panels(fig):
        (line,) = best_lines(ax)
        assert list(line.get_xdata()) == [40, 40] and line.get_linestyle() == "--"
        assert line.get_label() == "best checkpoint (step 40)"
    # task0's own maximum is at step 20; its star is at the best checkpoint, with its value there.
    right = next(ax for ax in fig.axes if ax.get_ylabel() == "validation accuracy")
    (star,) = [line for line in right.get_lines() if line.get_marker() == "*"]
    assert list(star.get_xdata()) == [40] and star.get_ydata()[0] == pytest.approx(0.6)
    # With per-task early stopping each task's figures come from its own step: given, it is drawn.
    fig = curves_figure(metrics, dict.fromkeys(TASKS, "accuracy"), {**dict.fromkeys(TASKS, 40), "task0": 20})
    assert [list(best_lines(ax)[0].get_xdata()) for ax in panels(fig)[:2]] == [[20, 20], [40, 40]]


def test_forgetting_episodes_are_ringed(tmp_path: Path) -> None:
    out = training_curves(write_metrics(tmp_path / "metrics.jsonl"), tmp_path / "curves.png", {"task0": "accuracy"})
    assert out.read_bytes()[:4] == b"\x89PNG"
    fig = curves_figure(tmp_path / "metrics.jsonl", {"task0": "accuracy", "task1": "accuracy"})
    marks = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "forgetting episode"]
    (ring,) = marks  # task0 only: task1 was never in an episode
    assert list(ring.get_xdata()) == [30, 50] and ring.get_markeredgecolor() == "tab:red"


def test_heatmap_colours_scale_to_the_off_diagonal_values(tmp_path: Path) -> None:
    rec = AffinityRecorder(tmp_path / "affinity.jsonl", every=10)
    tasks = ["a", "b", "c"]
    rec.record(10, tasks, [[1.0, 0.1, -0.05], [0.1, 1.0, 0.02], [-0.05, 0.02, 1.0]])
    rec.record(10, tasks, [[0.4, 0.01, -0.02], [0.005, 0.3, math.nan], [-0.01, 0.004, 0.5]], kind="lookahead")
    fig = rec.figure()
    images = [image for ax in fig.axes for image in ax.get_images()]
    assert len(images) == 4  # (mean, last) x (cosine, lookahead)
    cosine, lookahead = images[0], images[2]
    assert cosine.get_clim() == pytest.approx((-0.1, 0.1))  # not (-1, 1): the diagonal's 1s are not the scale
    assert lookahead.get_clim() == pytest.approx((-0.02, 0.02))  # not 0.5, the largest (diagonal) value
    data = lookahead.get_array()
    assert all(data.mask[i][i] for i in range(3)) and data.mask[1][2]  # diagonal and n/a cells uncoloured
    # Every value is still written on its cell, the diagonal's too.
    texts = [t.get_text() for t in lookahead.axes.texts]
    assert texts == ["0.4", "0.01", "-0.02", "0.005", "0.3", "n/a", "-0.01", "0.004", "0.5"]
    assert rec.plot() == tmp_path / "affinity.png"


def transfer_report() -> dict:
    """Two tasks, three seeds, every value near 0.9 (what summarise() and run_transfer() give)."""
    seeds = [1, 2, 3]
    single = {"a": [0.90, 0.91, 0.92], "b": [0.85, 0.86, 0.84]}
    multi = {"a": [0.93, 0.92, 0.94], "b": [0.83, 0.84, 0.82]}
    rows = []
    for task in single:
        s, m = single[task], multi[task]
        rows.append({"task": task, "metric": "accuracy", "single_mean": sum(s) / 3, "single_std": 0.01,
                     "multi_mean": sum(m) / 3, "multi_std": 0.01, "difference": (sum(m) - sum(s)) / 3,
                     "significant": task == "a"})  # fmt: skip
    return {
        "rows": rows, "seeds": seeds,
        "single": {t: {seed: {"results": {t: {"accuracy": single[t][i]}}} for i, seed in enumerate(seeds)} for t in single},
        "multi": {seed: {"results": {t: {"accuracy": multi[t][i]} for t in multi}} for i, seed in enumerate(seeds)},
    }  # fmt: skip


def offsets(points: PathCollection) -> list[list[float]]:
    return np.asarray(points.get_offsets()).tolist()


def test_transfer_chart_shows_each_seed_on_an_axis_from_the_data(tmp_path: Path) -> None:
    fig = bar_chart(transfer_report(), tmp_path / "transfer.png")
    assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert 0.75 < low < 0.82 and 0.94 < high <= 1.0  # not from 0: a 0.03 difference at 0.9 shows
    points = [(float(x), float(y)) for c in ax.collections if isinstance(c, PathCollection) for x, y in offsets(c)]
    assert len(points) == 12  # 2 tasks x 3 seeds x (single, multi)
    assert sorted(round(y, 2) for x, y in points if x < 0) == [0.9, 0.91, 0.92]  # task a, single (left of 0)
    assert sorted(round(y, 2) for x, y in points if 1 < x) == [0.82, 0.83, 0.84]  # task b, multi (right of 1)
    # Read back from transfer.json the seeds are strings: the same points.
    report = json.loads(json.dumps(transfer_report()))
    again = bar_chart(report, tmp_path / "again.png")
    assert sum(len(offsets(c)) for c in again.axes[0].collections if isinstance(c, PathCollection)) == 12
