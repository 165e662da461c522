"""Scheduled mixing: each task's weight is a piecewise-linear function of the step.

    mixing.schedule: {yelp: [[0, 1.0], [200, 0.1]], imdb: [[0, 0.0], [200, 1.0]]}

Keyframes are [step, weight]: linear in between, constant before the first and after the last;
`step` counts the optimizer steps done before the batch (0 for the first batch). Tasks the schedule
does not name keep weight 1 (so one task can be phased in: `++mixing.schedule.aux=[[0,0],[1000,1]]`).
At every step the weights are normalised over the tasks still training. The idea of jiant's
TimeDependentProbMultiTaskSampler, written as data instead of an expression to evaluate.

`check_schedule` (called by mixing.check_config) refuses what would fail or be ignored later:
unknown tasks, keyframes that are not two numbers, steps that do not increase, negative weights,
and a step at which every weight is 0.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from mtl_cli.config import MixingConfig
from mtl_cli.errors import MtlError
from mtl_cli.mixing.sampler import ScheduledSampler, StepCounts

Keyframes = list[tuple[float, float]]


def weight_at(keyframes: Keyframes, step: float) -> float:
    """The piecewise-linear weight at `step` (keyframes sorted by step, at least one)."""
    steps = [s for s, _ in keyframes]
    i = bisect.bisect_right(steps, step)
    if i == 0:
        return keyframes[0][1]
    if i == len(keyframes):
        return keyframes[-1][1]
    (s0, w0), (s1, w1) = keyframes[i - 1], keyframes[i]
    return w0 + (w1 - w0) * (step - s0) / (s1 - s0)


def scheduled_weights(schedule: dict[str, Keyframes], tasks: list[str], step: float) -> dict[str, float]:
    return {t: weight_at(schedule[t], step) if t in schedule else 1.0 for t in tasks}


def keyframes(schedule: dict[str, list[list[Any]]]) -> dict[str, Keyframes]:
    """The schedule as (step, weight) float pairs, in step order once `check_schedule` passed."""
    return {task: [(float(s), float(w)) for s, w in frames] for task, frames in schedule.items()}


def check_schedule(schedule: dict[str, list[list[Any]]], task_names: list[str]) -> None:
    for task, frames in schedule.items():
        at = f"mixing.schedule.{task}"
        if task not in task_names:
            raise MtlError(f"`mixing.schedule` names unknown task {task!r}; tasks in this run: {list(task_names)}")
        if not frames:
            raise MtlError(f"`{at}` has no keyframe: give [[step, weight], ...], e.g. ++{at}=[[0,1.0],[200,0.1]]")
        for frame in frames:
            if len(frame) != 2 or not all(_is_number(v) for v in frame):
                raise MtlError(
                    f"`{at}` keyframes must be [step, weight] pairs of numbers; got {_shown(frame)}, "
                    f"e.g. ++{at}=[[0,1.0],[200,0.1]]"
                )
        steps = [frame[0] for frame in frames]
        if steps[0] < 0:
            raise MtlError(f"`{at}`: steps must be 0 or more; got {steps[0]:g}")
        for before, after in zip(steps, steps[1:], strict=False):
            if not after > before:
                raise MtlError(f"`{at}`: keyframe steps must increase; got {before:g} then {after:g}")
        for step, weight in frames:
            if weight < 0:
                raise MtlError(f"`{at}`: weights must not be negative; got {weight:g} at step {step:g}")
    frames_of = keyframes(schedule)
    # Each weight is linear between its keyframes and constant outside, so their sum is lowest at
    # some keyframe's step (or at 0): checking those finds any step at which nothing can be drawn.
    for step in sorted({0.0, *(s for frames in frames_of.values() for s, _ in frames)}):
        weights = scheduled_weights(frames_of, task_names, step)
        if not sum(weights.values()) > 0:
            shown = ", ".join(f"{t}: {w:g}" for t, w in weights.items())
            raise MtlError(
                f"`mixing.schedule` gives every task weight 0 at step {step:g} ({{{shown}}}); "
                "give some task a positive weight there"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return "[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, list | tuple) else repr(value)


def schedule_sampler(cfg: MixingConfig, sizes: dict[str, int], seed: int, steps: StepCounts | None) -> ScheduledSampler:
    # The schedule is in steps already: the run's step counts are not needed.
    frames, tasks = keyframes(cfg.schedule), list(sizes)
    return ScheduledSampler(lambda draws: scheduled_weights(frames, tasks, draws), tasks, seed)
