"""Throughput of this process (timing.json): training and evaluation examples and tokens per second,
and the time from start-up to the first optimizer step. Not kept in checkpoints: a resumed run
counts afresh."""

from __future__ import annotations

import logging
import time
from typing import Any

import mtl_cli
from mtl_cli.callbacks import Callback
from mtl_cli.writers import write_json

log = logging.getLogger("mtl")


class Timing(Callback):
    def __init__(self) -> None:
        self.train_seconds, self.train_steps, self.train_examples = 0.0, 0, 0
        self.real_tokens, self.processed_tokens = 0, 0
        self.first_step_seconds: float | None = None

    def on_step(self, parts: Any, state: Any, step: Any) -> None:
        self.train_seconds += step.seconds
        self.train_steps += 1
        self.train_examples += sum(step.examples.values())
        self.real_tokens += step.real_tokens
        self.processed_tokens += step.processed_tokens
        if self.first_step_seconds is None:
            self.first_step_seconds = time.time() - mtl_cli.STARTED

    def write(self, parts: Any) -> dict:
        """timing.json (and its headline in the log); returns what it wrote."""
        timing = self.summary(parts.evaluator)
        write_json(parts.run.timing, timing)
        if timing["train_examples_per_second"]:
            log.info(
                "throughput: %.1f train examples/s, %.0f real tokens/s (%.0f%% of processed tokens are real), "
                "%.1f eval examples/s", timing["train_examples_per_second"], timing["real_tokens_per_second"],
                100 * timing["real_token_fraction"], timing["eval_examples_per_second"] or 0,
            )  # fmt: skip
        return timing

    def summary(self, evaluator: Any) -> dict:
        secs = self.train_seconds
        return {
            "train_seconds": secs, "train_steps": self.train_steps, "train_examples": self.train_examples,
            "real_tokens": self.real_tokens, "processed_tokens": self.processed_tokens,
            "eval_seconds": evaluator.seconds, "eval_examples": evaluator.examples,
            "first_step_seconds": self.first_step_seconds,
            "train_examples_per_second": self.train_examples / secs if secs else None,
            "real_tokens_per_second": self.real_tokens / secs if secs else None,
            "real_token_fraction": self.real_tokens / self.processed_tokens if self.processed_tokens else None,
            "eval_examples_per_second": evaluator.examples / evaluator.seconds if evaluator.seconds else None,
        }  # fmt: skip
