"""Task mixing: which task the next training batch comes from.

Adding a strategy: a module with a probability function (or a sampler builder), one line in
`STRATEGIES`, and `conf/mixing/<name>.yaml` setting `name: <name>`. STRATEGIES is the one list of
names: validation (`check_config`, called by mtl_cli.validation) reads it through `get`.
A builder gets the run's `StepCounts` too, for probabilities that change during training
(annealed, schedule: a `ScheduledSampler`).
"""

from __future__ import annotations

import math

from mtl_cli.config import MixingConfig
from mtl_cli.errors import MtlError
from mtl_cli.mixing.annealed import annealed_sampler
from mtl_cli.mixing.proportional import proportional_probabilities
from mtl_cli.mixing.round_robin import RoundRobinSampler, round_robin_sampler
from mtl_cli.mixing.sampler import Builder, RandomSampler, ScheduledSampler, StepCounts, TaskSampler, random_strategy
from mtl_cli.mixing.schedule import check_schedule, schedule_sampler
from mtl_cli.mixing.temperature import temperature_probabilities
from mtl_cli.mixing.uniform import uniform_probabilities
from mtl_cli.mixing.weights import completed_weights, weight_probabilities

__all__ = [
    "STRATEGIES", "RandomSampler", "RoundRobinSampler", "ScheduledSampler", "StepCounts", "TaskSampler",
    "build_sampler", "check_config", "get",
]  # fmt: skip

STRATEGIES: dict[str, Builder] = {
    "proportional": random_strategy(proportional_probabilities),
    "uniform": random_strategy(uniform_probabilities),
    "temperature": random_strategy(temperature_probabilities),
    "weights": random_strategy(weight_probabilities),
    "round_robin": round_robin_sampler,
    "annealed": annealed_sampler,
    "schedule": schedule_sampler,
}


def get(name: str) -> Builder:
    if name not in STRATEGIES:
        raise MtlError(f"unknown mixing strategy {name!r} (`mixing=`): choose one of {list(STRATEGIES)}")
    return STRATEGIES[name]


def check_config(cfg: MixingConfig, task_names: list[str]) -> None:
    """Reject settings no strategy can use; each message names the override to change."""
    get(cfg.name)
    if not cfg.temperature > 0:
        raise MtlError(f"`mixing.temperature` must be positive; got {cfg.temperature:g}")
    if cfg.max_examples is not None and cfg.max_examples <= 0:
        raise MtlError(f"`mixing.max_examples` must be positive (or null for no cap); got {cfg.max_examples}")
    if not 0 <= cfg.alpha_floor <= 1:
        raise MtlError(
            f"`mixing.alpha_floor` must be in [0, 1] (0 ends uniform, 1 stays proportional); got {cfg.alpha_floor:g}"
        )
    # Given to another strategy, the weights or the schedule would be silently ignored.
    for key, given in (("weights", cfg.weights), ("schedule", cfg.schedule)):
        if cfg.name != key and given:
            raise MtlError(
                f"`mixing.{key}` is only used by mixing={key}; add `mixing={key}` or drop them (mixing={cfg.name})"
            )
    if cfg.name == "weights":
        _check_weights(cfg.weights, task_names)
    if cfg.name == "schedule":
        check_schedule(cfg.schedule, task_names)


def _check_weights(weights: dict[str, float], task_names: list[str]) -> None:
    for name in weights:
        if name not in task_names:
            raise MtlError(f"`mixing.weights` names unknown task {name!r}; tasks in this run: {list(task_names)}")
    missing = [name for name in task_names if name not in weights]
    if missing and not sum(weights.values()) < 1:
        raise MtlError(
            f"`mixing.weights` has no weight for task {missing[0]!r} and the others leave nothing of 1: "
            f"set mixing.weights.{missing[0]}=<w>"
        )
    for name in task_names:
        if name not in weights:
            continue
        value = weights[name]
        if not (math.isfinite(value) and value >= 0):
            raise MtlError(f"`mixing.weights.{name}` must be a non-negative number; got {value:g}")
    full = completed_weights(weights, task_names)
    if not sum(full.values()) > 0:
        shown = ", ".join(f"{name}: {full[name]:g}" for name in task_names)
        raise MtlError(f"`mixing.weights` must sum to a positive number; got {{{shown}}}")


def build_sampler(cfg: MixingConfig, sizes: dict[str, int], seed: int, steps: StepCounts | None = None) -> TaskSampler:
    """The configured sampler over the tasks in `sizes` (training examples per task, in task order);
    `steps`: the run's step counts (train.prepare), which mixing=annealed needs."""
    check_config(cfg, list(sizes))
    if not sizes:
        raise MtlError("no task selected: pass task=<name>[+<name>...] (list them with `mtl tasks`)")
    return get(cfg.name)(cfg, sizes, seed, steps)
