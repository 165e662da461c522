"""Forgetting monitor: a task whose validation score falls well below its own best while training
goes on (the shared encoder drifting towards the other tasks) is flagged.

At every evaluation each trained task's score (`ev.scores`, higher is better, the same score that
picks checkpoints) is compared with the best it reached so far. A fall of more than
`trainer.forgetting_threshold` starts an episode: one warning in train.log, `forgetting: true`
in the task's metrics.jsonl records until the score is back within the threshold (a later fall
is a new episode, warned again). Per task it keeps the number of episodes and the largest fall,
for metrics.md and metrics.csv (`summary`); all of it in trainer_state.json, so a resumed run
neither warns twice nor forgets an episode.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from mtl_cli.callbacks import Callback
from mtl_cli.errors import MtlError

log = logging.getLogger("mtl")

# Scores are fractions of examples: a fall of exactly the threshold (3 of 60 = 0.05) must not count
# by a rounding error (0.65 - 0.6 = 0.05000000000000004).
EPS = 1e-9


@dataclass
class TaskRecord:
    best: float | None = None  # the best score so far, and the evaluation step it was reached at
    best_step: int = 0
    forgetting: bool = False  # in an episode now
    episodes: int = 0
    drop: float = 0.0  # the largest fall below the best so far (also falls within the threshold)
    peak_step: int | None = None  # the step of the best that largest fall was measured from
    low_step: int | None = None  # and the step it was measured at


class Forgetting(Callback):
    name = "forgetting"

    def __init__(self, threshold: float | None, metrics: dict[str, str]) -> None:
        """`threshold`: null turns the monitor off; `metrics`: trained task -> the name of its score."""
        self.threshold = threshold
        self.metrics = metrics
        self.tasks = {task: TaskRecord() for task in metrics}

    @classmethod
    def of(cls, parts: Any) -> Forgetting:
        t = parts.cfg.trainer
        # The metric train.main_score reads: trainer.best_metric where the task has it, else its main metric.
        metrics = {n: t.best_metric if t.best_metric in tt.METRICS else tt.MAIN_METRIC for n, tt in parts.types.items()}
        return cls(t.forgetting_threshold, metrics)

    def on_evaluate(self, parts: Any, state: Any, ev: Any) -> None:
        if self.threshold is None:
            return
        for task, rec in self.tasks.items():
            score = ev.scores.get(task)
            if score is not None and math.isfinite(score):  # a NaN score (Pearson of constant output) tells nothing
                self._update(task, rec, float(score), ev.step)
            if task in ev.records:
                ev.records[task]["forgetting"] = rec.forgetting

    def _update(self, task: str, rec: TaskRecord, score: float, step: int) -> None:
        assert self.threshold is not None
        if rec.best is None or score > rec.best:
            rec.best, rec.best_step = score, step
        fall = rec.best - score
        if fall > rec.drop:
            rec.drop, rec.peak_step, rec.low_step = fall, rec.best_step, step
        if fall > self.threshold + EPS and not rec.forgetting:
            rec.forgetting, rec.episodes = True, rec.episodes + 1
            log.warning(
                "forgetting: task %s's %s fell %.4g below its best (%.4g at step %d) to %.4g at step %d "
                "(trainer.forgetting_threshold=%g)",
                task, self.metrics[task], fall, rec.best, rec.best_step, score, step, self.threshold,
            )  # fmt: skip
        elif fall <= self.threshold + EPS and rec.forgetting:
            rec.forgetting = False
            log.info("forgetting: task %s's %s is back within %g of its best at step %d (%.4g)",
                     task, self.metrics[task], self.threshold, step, score)  # fmt: skip

    def summary(self) -> dict[str, dict[str, Any]]:
        """Task -> {episodes, drop, peak_step}, for the final table; {} when the monitor is off."""
        return summary(self.state_dict())

    def state_dict(self) -> dict:
        if self.threshold is None:
            return {}
        return {"threshold": self.threshold, "tasks": {task: asdict(rec) for task, rec in self.tasks.items()}}

    def load_state_dict(self, state: dict) -> None:
        # trainer_state.json may come from anyone: each field is checked before it is used.
        for task, saved in _tasks(state).items():
            if task in self.tasks:
                self.tasks[task] = _record(saved)


_NUMBER, _STEP = (int, float), (int, type(None))
_TYPES = {"best": (*_NUMBER, type(None)), "best_step": (int,), "forgetting": (bool,), "episodes": (int,),
          "drop": _NUMBER, "peak_step": _STEP, "low_step": _STEP}  # fmt: skip


def _tasks(state: Any) -> dict:
    tasks = state.get("tasks", {}) if isinstance(state, dict) else None
    if not isinstance(tasks, dict):
        raise _damaged()
    return tasks


def _damaged() -> MtlError:
    return MtlError(
        "trainer_state.json: `callbacks.forgetting` is not the forgetting monitor's state; the checkpoint is "
        "damaged or was not written by mtl: use another checkpoint, or train again"
    )


def _record(saved: Any) -> TaskRecord:
    # Exact types: a bool is no step count, a string no score.
    ok = isinstance(saved, dict) and all(k in saved and type(saved[k]) in kinds for k, kinds in _TYPES.items())
    if not ok:
        raise _damaged()
    return TaskRecord(**{k: saved[k] for k in _TYPES})


def summary(state: dict | None) -> dict[str, dict[str, Any]]:
    """Task -> {episodes, drop, peak_step} from the monitor's state (a run's `state.callbacks["forgetting"]`)."""
    out = {}
    for task, saved in _tasks(state or {}).items():
        rec = _record(saved)
        out[task] = {"episodes": rec.episodes, "drop": rec.drop, "peak_step": rec.peak_step}
    return out
