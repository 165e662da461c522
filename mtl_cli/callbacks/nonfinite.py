"""A NaN or infinite loss or gradient: skip that update (`trainer.nonfinite=skip`), or save the
batch and the weights the failing forward pass used to debug/step-<n>/ and stop (`stop`)."""

from __future__ import annotations

import logging
from typing import Any

from mtl_cli.callbacks import Callback, Stop
from mtl_cli.checkpoints import dump_nonfinite
from mtl_cli.writers import WriteError

log = logging.getLogger("mtl")


class NonfiniteGuard(Callback):
    name = "nonfinite"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.skipped = 0  # batches dropped (trainer.nonfinite=skip)

    def on_step(self, parts: Any, state: Any, step: Any) -> Stop | None:
        if step.problem is None:
            return None
        if self.mode == "skip":
            self.skipped += 1
            log.warning("step %d: %s; update skipped (%d so far; trainer.nonfinite=skip)", state.step, step.problem,
                        self.skipped)  # fmt: skip
            return None
        folder = parts.run.debug(state.step)
        # No update was applied: the saved weights are those the failing forward pass used.
        info = {"step": state.step, "problem": step.problem, "lr": step.lr}
        try:
            dump_nonfinite(folder, parts.model, step.batches, info)
            saved = f"the batch and weights are in {folder}"
        except WriteError as err:  # the loss is the news; the disk is the second one
            saved = f"its batch and weights could not be saved to {folder} ({err.reason}: {err.fix})"
        return Stop(
            f"{step.problem} at step {state.step}; {saved}. Lower trainer.lr, check the "
            "task's labels, or set trainer.nonfinite=skip; resume from the last checkpoint with "
            f"mtl train resume={parts.run}",
            error=True,
        )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state.get("skipped", 0)
