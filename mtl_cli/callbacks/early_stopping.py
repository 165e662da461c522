"""Per-task early stopping in the loop: a task whose validation score plateaus stops being sampled,
and each task's best point gets its own checkpoint (`best-<task>`), so its figures can be
reproduced exactly."""

from __future__ import annotations

import logging
from typing import Any

from mtl_cli.callbacks import Callback, Stop
from mtl_cli.checkpoints import save_checkpoint
from mtl_cli.early_stopping import TaskEarlyStopping

log = logging.getLogger("mtl")


class EarlyStopping(Callback):
    name = "early_stopping"

    def __init__(self, parts: Any) -> None:
        t = parts.cfg.trainer
        # Auxiliary tasks (MLM) are not early-stopped: they train until every main task has stopped.
        self.aux = [n for n, tt in parts.types.items() if tt.AUXILIARY]
        main = [n for n in parts.types if n not in self.aux]
        self.stopping = TaskEarlyStopping(main, t.early_stopping_patience, t.early_stopping_min_delta)

    def on_evaluate(self, parts: Any, state: Any, ev: Any) -> Stop | None:
        scores = {task: ev.scores[task] for task in self.stopping.active()}
        newly = self.stopping.update(state.step, scores)
        for task in scores:
            if self.stopping.improved(task):
                save_checkpoint(
                    parts.run.checkpoint(f"best-{task}"), parts.model, parts.tokenizer, parts.labels,
                    {"step": state.step, "task": task, "score": scores[task]}, parts.run.config, base=parts.base,
                )  # fmt: skip
        if newly:
            best = self.stopping.best()
            log.info(
                "early stopping: %s stopped at step %d (best %s); the other tasks go on",
                newly, state.step, {n: {"score": round(best[n][0], 4), "step": best[n][1]} for n in newly},
            )  # fmt: skip
        # The tasks still training: the sampler draws only these, and all-task steps take only these.
        state.active = self.stopping.active() + self.aux
        if self.stopping.all_stopped():
            return Stop(f"every task stopped early; training ends at step {state.step}")
        if newly:
            parts.sampler.set_active(state.active)
        return None

    def best_points(self) -> dict[str, int]:
        """Task -> the step of its best validation score (its `best-<task>` checkpoint)."""
        return {task: step for task, (_, step) in self.stopping.best().items()}

    def stopped(self) -> dict[str, int]:
        return self.stopping.stopped()

    def state_dict(self) -> dict:
        return self.stopping.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stopping.load_state_dict(state)
