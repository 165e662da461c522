"""The samplers shared by the random strategies, and the `TaskSampler` interface all samplers follow.

`RandomSampler` draws from fixed probabilities; `ScheduledSampler` from probabilities that are a
function of how many batches it has drawn (annealed, schedule). One draw is one optimizer step
(the loop asks once per step), so the draw count is the step; it is in the state_dict, so a resume
continues the schedule where it was.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mtl_cli.config import MixingConfig
from mtl_cli.early_stopping import renormalise
from mtl_cli.errors import MtlError

# What a strategy module exposes for a random strategy: the expected share of batches per task.
ProbabilityFn = Callable[[MixingConfig, dict[str, int]], dict[str, float]]


class TaskSampler(Protocol):
    """Chooses the task of each training batch."""

    # Expected share of the next batch per task, in task order, summing to 1 (a scheduled sampler
    # updates it after every draw; stopped tasks stay in it at 0).
    probabilities: dict[str, float]

    def next_task(self) -> str: ...

    def set_active(self, active: list[str]) -> None:
        """Draw only these tasks from now on (the others stopped early)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class StepCounts:
    """How the run measures time, for samplers whose probabilities change with it (train.prepare)."""

    steps_per_epoch: int  # optimizer steps in which the tasks' examples are seen once
    total_steps: int  # the run's budget (trainer.max_steps, or epochs x steps_per_epoch)

    @property
    def epochs(self) -> float:
        return self.total_steps / max(self.steps_per_epoch, 1)


# What the registry holds: (config, training sizes, seed, the run's step counts) -> sampler.
# The step counts are None where no run is planned (a sampler built on its own, e.g. in a test).
Builder = Callable[[MixingConfig, dict[str, int], int, StepCounts | None], TaskSampler]


def normalise(raw: dict[str, float], what: str) -> dict[str, float]:
    """Scale non-negative scores to sum to 1; `what` names the scores in the error."""
    total = sum(raw.values())
    if not total > 0:
        shown = ", ".join(f"{name}: {value:g}" for name, value in raw.items())
        raise MtlError(f"cannot mix tasks: every task has zero {what} ({{{shown}}}); check the training data")
    return {name: value / total for name, value in raw.items()}


def _table(probabilities: dict[str, float]) -> tuple[list[str], list[float]]:
    # Zero-probability tasks are left out of the table so rounding can never pick them.
    drawable = [(name, p) for name, p in probabilities.items() if p > 0]
    return [name for name, _ in drawable], list(itertools.accumulate(p for _, p in drawable))


def _pick(rng: np.random.Generator, names: list[str], cumulative: list[float]) -> str:
    # One uniform draw plus a bisect is ~50x faster than Generator.choice per call.
    u = rng.random() * cumulative[-1]
    return names[min(bisect.bisect_right(cumulative, u), len(names) - 1)]


class RandomSampler:
    """Draws each batch's task independently from fixed probabilities."""

    def __init__(self, probabilities: dict[str, float], seed: int) -> None:
        self._configured = dict(probabilities)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._use(self._configured)

    def _use(self, probabilities: dict[str, float]) -> None:
        self.probabilities = dict(probabilities)
        self._names, self._cumulative = _table(self.probabilities)

    def set_active(self, active: list[str]) -> None:
        """Stop drawing tasks that stopped early; the others keep their relative shares."""
        self._use(renormalise(self._configured, active))

    def next_task(self) -> str:
        return _pick(self._rng, self._names, self._cumulative)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


# A scheduled strategy's weights for the batch drawn after `draws` batches (non-negative, task order).
WeightsAt = Callable[[int], dict[str, float]]


class ScheduledSampler:
    """Draws each batch's task independently, with weights that depend on the batches drawn so far.

    `weights_at(draws)` gives the weights of the next batch; they are normalised over the active
    tasks. When every active task has weight 0 at some step (the tasks the schedule favours there
    stopped early), the active tasks are drawn uniformly until the weights come back: the loop
    must train something, and the schedule says nothing about the tasks that are left.
    """

    def __init__(self, weights_at: WeightsAt, tasks: list[str], seed: int) -> None:
        self._weights_at = weights_at
        self._tasks = list(tasks)
        self._active = list(tasks)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._draws = 0
        self._weights: dict[str, float] | None = None
        self._update()

    @property
    def draws(self) -> int:
        """Batches drawn so far: the optimizer steps done."""
        return self._draws

    def _update(self) -> None:
        weights = self._weights_at(self._draws)
        if weights == self._weights:  # most steps: the same epoch, or a constant stretch of the schedule
            return
        self._weights = weights
        kept = {t: (weights[t] if t in self._active else 0.0) for t in self._tasks}
        total = sum(kept.values())
        if total > 0:
            self.probabilities = {t: w / total for t, w in kept.items()}
        else:
            self.probabilities = {t: (1.0 / len(self._active) if t in self._active else 0.0) for t in self._tasks}
        self._names, self._cumulative = _table(self.probabilities)

    def next_task(self) -> str:
        task = _pick(self._rng, self._names, self._cumulative)
        self._draws += 1
        self._update()  # `probabilities` now describes the next batch
        return task

    def set_active(self, active: list[str]) -> None:
        """Draw only these tasks from now on; at every step they share what the schedule gives them."""
        if not any(t in active for t in self._tasks):
            raise MtlError(f"no task left to sample: active tasks {list(active)}, tasks {self._tasks}")
        self._active = [t for t in self._tasks if t in active]
        self._weights = None
        self._update()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "draws": self._draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        draws = state.get("draws")
        if type(draws) is not int or draws < 0:
            raise MtlError(
                f"the mixing sampler's state has no draw count (`draws`: {draws!r}); the checkpoint was written "
                "by another mixing strategy or is damaged: resume with the run's own mixing"
            )
        self._rng.bit_generator.state = state["rng"]
        self._draws = draws
        self._weights = None
        self._update()


def random_strategy(probabilities: ProbabilityFn) -> Builder:
    """Turn a module's probability function into a registry entry."""

    def build(cfg: MixingConfig, sizes: dict[str, int], seed: int, steps: StepCounts | None) -> TaskSampler:
        return RandomSampler(probabilities(cfg, sizes), seed)

    return build
