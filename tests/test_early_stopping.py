"""Per-task early stopping on scripted validation curves, `renormalise`, and the training-curves plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mtl_cli.early_stopping import TaskEarlyStopping, renormalise
from mtl_cli.errors import MtlError
from mtl_cli.plots import training_curves
from tests.conftest import tiny_run

EVAL_EVERY = 10


def run_curves(stopper: TaskEarlyStopping, curves: dict[str, list[float]]) -> dict[int, list[str]]:
    """Feed one score per task per eval (eval i at step 10*(i+1)); returns step -> tasks stopped there.

    A task's curve is only read while it is active, so shorter curves may end at its stop.
    """
    stops = {}
    for i in range(max(len(c) for c in curves.values())):
        step = EVAL_EVERY * (i + 1)
        scores = {task: curve[i] for task, curve in curves.items() if task in stopper.active()}
        newly = stopper.update(step, scores)
        if newly:
            stops[step] = newly
    return stops


def test_improving_task_never_stops() -> None:
    stopper = TaskEarlyStopping(["a"], patience=1)
    stops = run_curves(stopper, {"a": [0.1 * i for i in range(20)]})
    assert stops == {}
    assert stopper.active() == ["a"]
    assert stopper.best()["a"] == (pytest.approx(1.9), 200)


def test_plateau_stops_after_exactly_patience_evals() -> None:
    stopper = TaskEarlyStopping(["a"], patience=3)
    # Best 0.6 at eval 3 (step 30); evals 4, 5, 6 (steps 40-60) do not beat it.
    scores = [0.4, 0.5, 0.6, 0.6, 0.55, 0.59]
    for i, score in enumerate(scores[:-1]):
        assert stopper.update(EVAL_EVERY * (i + 1), {"a": score}) == []
        assert stopper.active() == ["a"]
    assert stopper.update(60, {"a": scores[-1]}) == ["a"]
    assert stopper.stopped() == {"a": 60}
    assert stopper.active() == []
    assert stopper.best() == {"a": (0.6, 30)}


def test_improvement_resets_the_patience_count() -> None:
    stopper = TaskEarlyStopping(["a"], patience=2)
    stops = run_curves(stopper, {"a": [0.5, 0.4, 0.6, 0.5, 0.5]})
    assert stops == {50: ["a"]}
    assert stopper.best() == {"a": (0.6, 30)}


def test_min_delta_gains_must_exceed_it() -> None:
    stopper = TaskEarlyStopping(["a"], patience=2, min_delta=0.05)
    # +0.04 and then exactly +0.05 (1.0 is exact in binary) are not improvements; +0.06 would have been.
    stops = run_curves(stopper, {"a": [0.5, 0.54, 0.55]})
    assert stops == {30: ["a"]}
    assert stopper.best() == {"a": (0.5, 10)}

    stopper = TaskEarlyStopping(["a"], patience=2, min_delta=0.05)
    assert run_curves(stopper, {"a": [0.5, 0.56, 0.62, 0.68]}) == {}
    assert stopper.best() == {"a": (0.68, 40)}


def test_two_tasks_stop_at_different_steps_then_all_stopped() -> None:
    stopper = TaskEarlyStopping(["a", "b"], patience=2)
    curves = {"a": [0.5, 0.5, 0.5], "b": [0.1, 0.2, 0.3, 0.3, 0.2, 0.9]}
    stops = run_curves(stopper, curves)
    assert stops == {30: ["a"], 50: ["b"]}
    assert stopper.stopped() == {"a": 30, "b": 50}
    assert stopper.best() == {"a": (0.5, 10), "b": (0.3, 30)}
    assert stopper.all_stopped()


def test_stopped_task_scores_are_ignored() -> None:
    stopper = TaskEarlyStopping(["a", "b"], patience=1)
    assert stopper.update(10, {"a": 0.5, "b": 0.5}) == []
    assert stopper.update(20, {"a": 0.4, "b": 0.6}) == ["a"]
    assert not stopper.all_stopped()
    # A stopped task's later (frozen-head) scores change nothing, and it needs no score at all.
    assert stopper.update(30, {"a": 0.99, "b": 0.7}) == []
    assert stopper.update(40, {"b": 0.8}) == []
    assert stopper.best()["a"] == (0.5, 10)
    assert stopper.stopped() == {"a": 20}


def test_missing_active_score_is_an_error() -> None:
    stopper = TaskEarlyStopping(["a", "b"], patience=1)
    with pytest.raises(MtlError, match="'b'"):
        stopper.update(10, {"a": 0.5})


def test_patience_none_never_stops_but_tracks_best() -> None:
    stopper = TaskEarlyStopping(["a"], patience=None)
    assert run_curves(stopper, {"a": [0.9] + [0.1] * 50}) == {}
    assert stopper.active() == ["a"]
    assert not stopper.all_stopped()
    assert stopper.best() == {"a": (0.9, 10)}


def test_tie_is_not_an_improvement_and_improved_flag() -> None:
    stopper = TaskEarlyStopping(["a", "b"], patience=5)
    assert stopper.best() == {}
    stopper.update(10, {"a": 0.5, "b": 0.5})
    assert stopper.improved("a") and stopper.improved("b")  # the first score is always the best so far
    stopper.update(20, {"a": 0.5, "b": 0.7})
    assert not stopper.improved("a")  # tie: the step-10 head stays the best
    assert stopper.improved("b")
    assert stopper.best() == {"a": (0.5, 10), "b": (0.7, 20)}
    stopper.update(30, {"a": 0.6, "b": 0.69})
    assert stopper.improved("a") and not stopper.improved("b")
    assert stopper.best() == {"a": (0.6, 30), "b": (0.7, 20)}
    with pytest.raises(KeyError):
        stopper.improved("c")


def test_improved_is_false_once_stopped() -> None:
    stopper = TaskEarlyStopping(["a"], patience=1)
    stopper.update(10, {"a": 0.5})
    stopper.update(20, {"a": 0.5})
    assert stopper.stopped() == {"a": 20}
    assert not stopper.improved("a")


def test_nan_score_counts_as_no_improvement() -> None:
    stopper = TaskEarlyStopping(["a"], patience=2)
    assert run_curves(stopper, {"a": [math.nan, 0.3, math.nan, math.nan]}) == {40: ["a"]}
    assert stopper.best() == {"a": (0.3, 20)}


def test_state_round_trip_through_json() -> None:
    curves = {"a": [0.5, 0.5, 0.5, 0.5], "b": [0.1, 0.2, 0.3, 0.3, 0.3]}
    stopper = TaskEarlyStopping(["a", "b"], patience=3)
    run_curves(stopper, {task: curve[:2] for task, curve in curves.items()})
    restored = TaskEarlyStopping(["a", "b"], patience=3)
    restored.load_state_dict(json.loads(json.dumps(stopper.state_dict(), allow_nan=False)))
    assert restored.best() == stopper.best()
    assert restored.improved("b") and not restored.improved("a")

    # Continued after the round trip, it stops exactly where the uninterrupted one does.
    uninterrupted = TaskEarlyStopping(["a", "b"], patience=3)
    expected = run_curves(uninterrupted, curves)
    later = {}
    for i in range(2, 5):
        step = EVAL_EVERY * (i + 1)
        newly = restored.update(step, {t: c[i] for t, c in curves.items() if t in restored.active()})
        if newly:
            later[step] = newly
    assert later == expected == {40: ["a"]}
    assert restored.state_dict() == uninterrupted.state_dict()


def test_state_for_other_tasks_is_rejected() -> None:
    stopper = TaskEarlyStopping(["a"], patience=1)
    with pytest.raises(MtlError, match="same tasks"):
        TaskEarlyStopping(["a", "b"], patience=1).load_state_dict(stopper.state_dict())


@pytest.mark.parametrize(("patience", "min_delta"), [(0, 0.0), (-1, 0.0), (2, -0.1), (2, math.nan)])
def test_bad_settings(patience: int, min_delta: float) -> None:
    with pytest.raises(MtlError):
        TaskEarlyStopping(["a"], patience=patience, min_delta=min_delta)


def test_renormalise() -> None:
    probs = {"a": 0.2, "b": 0.3, "c": 0.5}
    assert renormalise(probs, ["a", "b", "c"]) == pytest.approx(probs)
    out = renormalise(probs, ["a", "c"])
    assert list(out) == ["a", "b", "c"]
    assert out == pytest.approx({"a": 0.2 / 0.7, "b": 0.0, "c": 0.5 / 0.7})
    assert renormalise(probs, ["b"]) == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert probs == {"a": 0.2, "b": 0.3, "c": 0.5}  # the input is left alone


def test_renormalise_nothing_left() -> None:
    with pytest.raises(MtlError, match="no task left"):
        renormalise({"a": 0.5, "b": 0.5}, [])
    with pytest.raises(MtlError, match="no task left"):
        renormalise({"a": 0.0, "b": 1.0}, ["a"])  # the only active task has a zero weight


def write_metrics(path: Path, drop_field: str | None = None) -> Path:
    records = []
    for i, step in enumerate([10, 20, 30, 40]):
        a: dict[str, Any] = {"step": step, "split": "validation", "task": "a", "accuracy": [0.5, 0.6, 0.6, 0.55][i],
             "loss": 0.7, "train_loss": 1.0 - 0.1 * i, "examples_seen": 8 * step, "epochs": step / 40, "weight": 1.0}  # fmt: skip
        if step >= 30:
            a["stopped"] = True
        b = {"step": step, "split": "validation", "task": "b", "f1": 0.1 * i, "loss": 2.0,
             "train_loss": None if i == 0 else 2.0 - 0.2 * i, "examples_seen": 8 * step, "epochs": step / 40}  # fmt: skip
        if drop_field:
            b.pop(drop_field)
        average = {"step": step, "split": "validation", "task": "average", "main": (a["accuracy"] + 0.1 * i) / 2}
        records += [a, b, average]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 50, "spl', encoding="utf-8")
    return path


@pytest.mark.parametrize("drop_field", [None, "train_loss", "f1"])
def test_training_curves_png(tmp_path: Path, drop_field: str | None) -> None:
    metrics = write_metrics(tmp_path / "metrics.jsonl", drop_field)
    out = training_curves(metrics, tmp_path / "plots" / "curves.png", {"a": "accuracy", "b": "f1", "average": "main"})
    assert out == tmp_path / "plots" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_without_records(tmp_path: Path) -> None:
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(MtlError, match="no validation records"):
        training_curves(empty, tmp_path / "curves.png", {})


def test_tasks_stop_early_in_a_real_run_and_keep_their_best_checkpoints(tmp_path: Path) -> None:
    """With a learning rate too small to move the metrics, no task improves after its first
    evaluation: with patience 2 both stop at the third evaluation and the run ends there."""
    import csv

    overrides = [  # on the two demo tasks
        "trainer.max_steps=40", "trainer.eval_every=2", "trainer.batch_size=4", "trainer.lr=1e-12",
        "trainer.warmup_ratio=0", "trainer.early_stopping_patience=2",
    ]  # fmt: skip
    run = Path(tiny_run(tmp_path, *overrides)["run_dir"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6  # evaluations at 2, 4, 6; then every task had stopped
    last = {r["task"]: r for r in records if r["step"] == 6}
    assert last["restaurants"]["stopped"] and last["electronics"]["stopped"]
    assert not any(r.get("stopped") for r in records if r["step"] < 6)
    for task in ("restaurants", "electronics"):
        assert (run / "checkpoints" / f"best-{task}" / "model.safetensors").is_file()
    rows = {r["task"]: r for r in csv.DictReader((run / "metrics.csv").open())}
    assert rows["restaurants"]["best_step"] == "2" and rows["restaurants"]["stopped_at"] == "6"
    assert "every task stopped early" in (run / "train.log").read_text()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
