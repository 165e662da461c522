"""Optional features of the training loop, each one small object with the same few methods.

    name                              key of its state in trainer_state.json (`callbacks.<name>`); "" keeps none
    on_step(parts, state, step)       after each optimizer step (`step`: a steps.StepResult)
    on_evaluate(parts, state, ev)     after each validation pass (`ev`: an Evaluation; may add to its records)
    on_finish(parts, state)           after the final scoring
    on_close(parts, state, error)     however the run ends, last: `error` is the exception ending it, None at the end
    state_dict() / load_state_dict()  what a checkpoint keeps of it, so a resume continues exactly

`on_step` and `on_evaluate` return a `Stop` to end training (every task stopped early, a
non-finite loss), else None. Adding a feature: a class here, and one line in
`train.build_callbacks`; `fit()` and resuming reach it through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stop:
    """Why training ends early; `error` makes the run fail with this message (exit 2)."""

    reason: str
    error: bool = False


class Callback:
    name = ""

    def on_step(self, parts: Any, state: Any, step: Any) -> Stop | None:
        return None

    def on_evaluate(self, parts: Any, state: Any, ev: Any) -> Stop | None:
        return None

    def on_finish(self, parts: Any, state: Any) -> None:
        return None

    def on_close(self, parts: Any, state: Any, error: BaseException | None) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
