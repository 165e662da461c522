"""Round-robin mixing: a fixed cycle a, b, c, a, b, c, ... over the tasks in order."""

from __future__ import annotations

from typing import Any

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.sampler import StepCounts


class RoundRobinSampler:
    def __init__(self, tasks: list[str]) -> None:
        self._all = list(tasks)
        self._tasks = list(tasks)
        self._index = 0
        self.probabilities = {name: 1.0 / len(self._tasks) for name in self._tasks}

    def next_task(self) -> str:
        task = self._tasks[self._index % len(self._tasks)]
        self._index += 1
        return task

    def set_active(self, active: list[str]) -> None:
        self._tasks = [t for t in self._all if t in active]

    def state_dict(self) -> dict[str, Any]:
        return {"index": self._index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._index = int(state["index"])


def round_robin_sampler(
    cfg: MixingConfig, sizes: dict[str, int], seed: int, steps: StepCounts | None
) -> RoundRobinSampler:
    # Deterministic and the same at every step, so the seed and the step counts are unused.
    return RoundRobinSampler(list(sizes))
