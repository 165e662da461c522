"""Per-task early stopping: stop training a task once its validation score stops improving.

The training loop calls `update(step, scores)` after each validation pass with every tracked
task's main metric (higher is better). A task stops after `patience` consecutive evals that do
not beat its best by more than `min_delta`; the loop then stops sampling it (`renormalise`) and
keeps the head it had at its best step (`improved`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mtl_cli.errors import MtlError


@dataclass
class _TaskState:
    best: float | None = None  # None until the first finite score: -inf is not valid JSON
    best_step: int | None = None
    bad_evals: int = 0  # consecutive evals without improvement
    stopped_at: int | None = None
    improved: bool = False  # did the latest update raise the best


class TaskEarlyStopping:
    """Tracks each task's best validation score and stops the tasks that plateau.

    `patience=None` disables stopping (best scores are still tracked).
    """

    def __init__(self, tasks: list[str], patience: int | None, min_delta: float = 0.0) -> None:
        if patience is not None and patience < 1:
            raise MtlError(f"early stopping patience must be at least 1 (or null to never stop); got {patience}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise MtlError(f"early stopping min_delta must be a non-negative number; got {min_delta:g}")
        if len(set(tasks)) != len(tasks):
            raise MtlError(f"early stopping: duplicate task names in {list(tasks)}")
        self.patience = patience
        self.min_delta = min_delta
        self._tasks = {task: _TaskState() for task in tasks}

    def update(self, step: int, scores: dict[str, float]) -> list[str]:
        """Record one eval; returns the tasks that stopped at this step.

        `scores` must hold every active task; stopped tasks' and untracked names' scores are ignored.
        A NaN score counts as an eval without improvement.
        """
        missing = [task for task in self.active() if task not in scores]
        if missing:
            raise MtlError(f"early stopping: no validation score for task(s) {missing} at step {step}")
        newly_stopped = []
        for task, state in self._tasks.items():
            state.improved = False
            if state.stopped_at is not None:
                continue
            score = float(scores[task])
            # Strictly greater: a tie (or a gain of exactly min_delta) is not an improvement.
            if math.isfinite(score) and (state.best is None or score > state.best + self.min_delta):
                state.best, state.best_step, state.bad_evals, state.improved = score, step, 0, True
                continue
            state.bad_evals += 1
            if self.patience is not None and state.bad_evals >= self.patience:
                state.stopped_at = step
                newly_stopped.append(task)
        return newly_stopped

    def active(self) -> list[str]:
        """Tasks still training, in task order."""
        return [task for task, state in self._tasks.items() if state.stopped_at is None]

    def stopped(self) -> dict[str, int]:
        """Stopped task -> step of the eval at which it stopped."""
        return {task: state.stopped_at for task, state in self._tasks.items() if state.stopped_at is not None}

    def best(self) -> dict[str, tuple[float, int]]:
        """Task -> (best score, its step), for tasks with at least one finite score."""
        return {
            task: (state.best, state.best_step)
            for task, state in self._tasks.items()
            if state.best is not None and state.best_step is not None
        }

    def all_stopped(self) -> bool:
        return not self.active()

    def improved(self, task: str) -> bool:
        """Whether the latest `update` raised `task`'s best (snapshot its head now)."""
        if task not in self._tasks:
            raise KeyError(f"early stopping does not track task {task!r}; tracked: {list(self._tasks)}")
        return self._tasks[task].improved

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": {task: asdict(state) for task, state in self._tasks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["tasks"]
        if list(saved) != list(self._tasks):
            raise MtlError(
                f"early stopping state is for tasks {list(saved)} but this run has {list(self._tasks)}; "
                "resume with the same tasks"
            )
        # patience and min_delta stay as configured now, so a resumed run may change them.
        self._tasks = {task: _TaskState(**saved[task]) for task in saved}


def renormalise(probabilities: dict[str, float], active: list[str]) -> dict[str, float]:
    """Sampling probabilities with every task outside `active` set to 0, rescaled to sum to 1."""
    keep = set(active)
    kept = {task: (p if task in keep else 0.0) for task, p in probabilities.items()}
    total = sum(kept.values())
    if not total > 0:
        raise MtlError(
            f"no task left to sample: active tasks {list(active)} have zero probability in {dict(probabilities)}"
        )
    return {task: p / total for task, p in kept.items()}
