"""Experiment tracking: `train_metrics.jsonl` always, and the trackers `trainer.loggers` names.

    train_metrics.jsonl   every `trainer.log_every` steps (and at the last one) a record of the means over
                          those steps: {"step", "epoch", "loss": {task: mean, null if not trained},
                          "lr", "grad_norm", "examples_per_second", "tokens_per_second" (real, not
                          padding), "task_weights", "sampling" (mixing probabilities; null when
                          every step trains every task)}
    tensorboard           <run>/tensorboard/ (callbacks/tracking_tensorboard.py)
    mlflow                a run in an MLflow tracking store (callbacks/tracking_mlflow.py)

Every tracker gets the same scalars, each with its step:

    train/loss/<task>, train/lr, train/grad_norm, train/examples_per_second,      every log_every steps
      train/tokens_per_second, train/epoch, train/task_weight/<task>, train/sampling/<task>
    validation/<task>/<metric>, validation/average/<metric>                        every evaluation
    test/<task>/<metric>, test/average/<metric>   at the end: the best checkpoint's (results.json), at the last step
    gates/<task>/expert_<i>   (sharing=mmoe: the mean gate weight since the last evaluation)
    affinity/<kind>/<a>~<b>   (every affinity measurement: cosine, and lookahead: a's step on b's loss)

The open window (the steps since the last record) is kept in checkpoints, so a resumed run writes
the records an uninterrupted one would. Only rank 0 tracks (train.build_callbacks).
"""

from __future__ import annotations

import math
from typing import Any

from mtl_cli.callbacks import Callback
from mtl_cli.callbacks.affinity import AffinityProbe
from mtl_cli.readers import read_json
from mtl_cli.writers import append_jsonl


def empty_window(tasks: list[str]) -> dict:
    return {
        "steps": 0, "examples": 0, "tokens": 0, "seconds": 0.0,
        "loss": {t: [0.0, 0] for t in tasks}, "grad_norm": [0.0, 0],  # [sum, count]
    }  # fmt: skip


def mean(pair: list) -> float | None:
    return pair[0] / pair[1] if pair[1] else None


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_trackers(parts: Any) -> list[Any]:
    # Imported per tracker: each module imports its library only when it is built.
    from mtl_cli.callbacks.tracking_mlflow import Mlflow
    from mtl_cli.callbacks.tracking_tensorboard import TensorBoard

    kinds = {"tensorboard": TensorBoard, "mlflow": Mlflow}
    return [kinds[str(name)](parts) for name in dict.fromkeys(parts.cfg.trainer.loggers)]


class Tracking(Callback):
    """Appended after the affinity probe and the weighting diagnostics: it logs what they measured."""

    name = "tracking"

    def __init__(self, parts: Any, callbacks: list[Callback]) -> None:
        self.every = parts.cfg.trainer.log_every
        self.tasks = list(parts.batches)
        self.window = empty_window(self.tasks)
        self.probe = next((cb for cb in callbacks if isinstance(cb, AffinityProbe)), None)
        self.trackers = build_trackers(parts)  # a tracker that cannot start fails here, before any step
        self.started = False

    def start(self, parts: Any, first_step: int) -> None:
        """Open the trackers; `first_step` is the first step this process trains (after a checkpoint's)."""
        if not self.started:
            self.started = True
            for tracker in self.trackers:
                tracker.start(parts, first_step)

    def log(self, step: int, values: dict[str, float], group: str) -> None:
        if values:
            for tracker in self.trackers:
                tracker.scalars(step, values, group)

    def on_step(self, parts: Any, state: Any, step: Any) -> None:
        self.start(parts, state.step)
        w = self.window
        w["steps"] += 1
        w["examples"] += sum(step.examples.values())
        w["tokens"] += step.real_tokens
        w["seconds"] += step.seconds
        if step.problem is None:  # a skipped non-finite step adds no loss to the means
            for task, loss in step.losses.items():
                w["loss"][task][0] += loss
                w["loss"][task][1] += 1
        if step.grad_norm is not None and math.isfinite(step.grad_norm):
            w["grad_norm"][0] += step.grad_norm
            w["grad_norm"][1] += 1
        if self.probe is not None and self.probe.latest_step == state.step:
            self.log_affinity(state.step, self.probe.latest)
        if state.step % self.every == 0 or state.step == parts.total_steps:
            rec = self.record(parts, state, step)
            append_jsonl(parts.run.train_metrics, [rec])
            self.log(state.step, train_scalars(rec), "train")
            self.window = empty_window(self.tasks)

    def record(self, parts: Any, state: Any, step: Any) -> dict:
        w, secs = self.window, self.window["seconds"]
        return {
            "step": state.step,
            "epoch": state.step / parts.steps_per_epoch,
            "loss": {t: mean(w["loss"][t]) for t in self.tasks},
            "lr": step.lr[0] if step.lr else None,  # every parameter group follows the same schedule
            "grad_norm": mean(w["grad_norm"]),
            "examples_per_second": w["examples"] / secs if secs else None,
            "tokens_per_second": w["tokens"] / secs if secs else None,
            "task_weights": {t: float(v) for t, v in parts.weighting.weights().items()},
            # Weightings that need every task's loss at a step train all tasks each step: mixing is not used.
            "sampling": None if parts.weighting.needs_all_tasks else dict(parts.sampler.probabilities),
        }

    def log_affinity(self, step: int, latest: dict) -> None:
        values = {}
        for kind, (tasks, matrix) in latest.items():
            for i, a in enumerate(tasks):
                for j, b in enumerate(tasks):
                    # Cosines are symmetric: one of each pair. Lookahead is not: a's step on b's loss.
                    if i != j and (kind != "cosine" or i < j) and number(matrix[i][j]):
                        values[f"affinity/{kind}/{a}~{b}"] = float(matrix[i][j])
            for tracker in self.trackers:
                tracker.matrix(step, kind, tasks, matrix)
        self.log(step, values, "affinity")

    def on_evaluate(self, parts: Any, state: Any, ev: Any) -> None:
        self.start(parts, ev.step)
        values = {
            f"validation/{task}/{metric}": float(v)
            for task, metrics in ev.results.items()
            for metric, v in metrics.items()
            if number(v)
        }
        for task, rec in ev.records.items():  # the diagnostics put MMoE's gates and PCGrad/CAGrad's conflicts there
            for i, g in enumerate(rec.get("gates") or []):
                if number(g):
                    values[f"gates/{task}/expert_{i}"] = float(g)
            if number(rec.get("conflict_share")):
                values["conflicts/share_of_steps"] = float(rec["conflict_share"])
            for other, cosine in (rec.get("conflict_cosine") or {}).items():
                if number(cosine) and task < other:  # each pair once
                    values[f"conflicts/cosine/{task}~{other}"] = float(cosine)
            if rec.get("forgetting") is True or rec.get("forgetting") is False:
                values[f"forgetting/{task}"] = float(rec["forgetting"])
        self.log(ev.step, values, "validation")
        for tracker in self.trackers:
            tracker.flush()

    def on_finish(self, parts: Any, state: Any) -> None:
        self.start(parts, state.step + 1)  # a resume that only had the final scoring left
        results = read_json(parts.run.results) if parts.run.results.is_file() else {}  # the best checkpoint's, on test
        values = {
            f"test/{task}/{metric}": float(v)
            for task, metrics in results.items()
            if isinstance(metrics, dict)
            for metric, v in metrics.items()
            if number(v)
        }
        self.log(state.step, values, "test")
        for tracker in self.trackers:
            tracker.finish(parts)

    def on_close(self, parts: Any, state: Any, error: BaseException | None) -> None:
        for tracker in self.trackers:
            tracker.close(error)

    def state_dict(self) -> dict:
        # Called as each checkpoint is written: the trackers flush, so a kill loses no event at or
        # before the checkpoint's step (the resumed run writes the later ones again).
        for tracker in self.trackers:
            tracker.flush()
        return {"window": self.window, **{t.name: t.state_dict() for t in self.trackers}}

    def load_state_dict(self, state: dict) -> None:
        window = state.get("window")
        if isinstance(window, dict) and set(window.get("loss", {})) == set(self.tasks):
            self.window = window
        for tracker in self.trackers:
            tracker.load_state_dict(state.get(tracker.name) or {})


def train_scalars(rec: dict) -> dict[str, float]:
    values = {f"train/loss/{t}": v for t, v in rec["loss"].items() if v is not None}
    for key in ("lr", "grad_norm", "examples_per_second", "tokens_per_second", "epoch"):
        if rec[key] is not None:
            values[f"train/{key}"] = rec[key]
    values.update({f"train/task_weight/{t}": w for t, w in rec["task_weights"].items()})
    values.update({f"train/sampling/{t}": p for t, p in (rec["sampling"] or {}).items()})
    return {k: float(v) for k, v in values.items() if number(v)}
