"""The sampler shared by the random strategies, and the `TaskSampler` interface all samplers follow."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mtl_cli.config import MixingConfig
from mtl_cli.early_stopping import renormalise
from mtl_cli.errors import MtlError

# What a strategy module exposes for a random strategy: the expected share of batches per task.
ProbabilityFn = Callable[[MixingConfig, dict[str, int]], dict[str, float]]


class TaskSampler(Protocol):
    """Chooses the task of each training batch."""

    # Configured expected share of batches per task, in task order, summing to 1.
    probabilities: dict[str, float]

    def next_task(self) -> str: ...

    def set_active(self, active: list[str]) -> None:
        """Draw only these tasks from now on (the others stopped early)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# What the registry holds: (config, training sizes, seed) -> sampler.
Builder = Callable[[MixingConfig, dict[str, int], int], TaskSampler]


def normalise(raw: dict[str, float], what: str) -> dict[str, float]:
    """Scale non-negative scores to sum to 1; `what` names the scores in the error."""
    total = sum(raw.values())
    if not total > 0:
        shown = ", ".join(f"{name}: {value:g}" for name, value in raw.items())
        raise MtlError(f"cannot mix tasks: every task has zero {what} ({{{shown}}}); check the training data")
    return {name: value / total for name, value in raw.items()}


class RandomSampler:
    """Draws each batch's task independently from fixed probabilities."""

    def __init__(self, probabilities: dict[str, float], seed: int) -> None:
        self._configured = dict(probabilities)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._use(self._configured)

    def _use(self, probabilities: dict[str, float]) -> None:
        self.probabilities = dict(probabilities)
        # Zero-probability tasks are left out of the table so rounding can never pick them.
        drawable = [(name, p) for name, p in self.probabilities.items() if p > 0]
        self._names = [name for name, _ in drawable]
        self._cumulative = list(itertools.accumulate(p for _, p in drawable))

    def set_active(self, active: list[str]) -> None:
        """Stop drawing tasks that stopped early; the others keep their relative shares."""
        self._use(renormalise(self._configured, active))

    def next_task(self) -> str:
        # One uniform draw plus a bisect is ~50x faster than Generator.choice per call.
        u = self._rng.random() * self._cumulative[-1]
        index = min(bisect.bisect_right(self._cumulative, u), len(self._names) - 1)
        return self._names[index]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


def random_strategy(probabilities: ProbabilityFn) -> Builder:
    """Turn a module's probability function into a registry entry."""

    def build(cfg: MixingConfig, sizes: dict[str, int], seed: int) -> TaskSampler:
        return RandomSampler(probabilities(cfg, sizes), seed)

    return build
