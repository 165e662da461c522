"""TensorBoard event files in `<run>/tensorboard/` (`trainer.loggers` has tensorboard, the default),
so that `tensorboard --logdir runs` shows every run, each job of a sweep included.

A resumed run opens its writer with `purge_step` at the first step it trains: TensorBoard then
hides what an earlier process wrote from that step on, which this one writes again, so no step is
shown twice. Affinity matrices go in as text tables beside their pairs' scalars.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line
from mtl_cli.writers import writing

log = logging.getLogger("mtl")


class TensorBoard:
    name = "tensorboard"

    def __init__(self, parts: Any) -> None:
        try:  # delayed: torch.utils.tensorboard imports tensorboard and its protobufs, seconds on a slow disk
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MtlError(
                "trainer.loggers has tensorboard, but the tensorboard package is not installed: pip install "
                "tensorboard, or set trainer.loggers=[] (train_metrics.jsonl is written either way)"
            ) from None
        self.folder: Path = parts.run.tensorboard
        self.summary_writer = SummaryWriter
        self.writer: Any = None

    def start(self, parts: Any, first_step: int) -> None:
        earlier = self.folder.is_dir() and any(self.folder.glob("events.out.tfevents.*"))
        with writing(self.folder, what="create"):
            self.writer = self.summary_writer(str(self.folder), purge_step=first_step if earlier else None)

    def scalars(self, step: int, values: dict[str, float], group: str) -> None:
        if self.writer is not None:
            with writing(self.folder):  # the writer's thread fails on a full disk; the next call raises it
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def matrix(self, step: int, kind: str, tasks: list[str], matrix: list[list[float]]) -> None:
        if self.writer is not None:
            rows = [f"| | {' | '.join(tasks)} |", "|---" * (len(tasks) + 1) + "|"]
            rows += [
                f"| **{a}** | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                for a, row in zip(tasks, matrix, strict=True)
            ]
            with writing(self.folder):
                self.writer.add_text(f"affinity/{kind}", "\n".join(rows), step)

    def flush(self) -> None:
        if self.writer is not None:
            with writing(self.folder):
                self.writer.flush()

    def finish(self, parts: Any) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with writing(self.folder):
                writer.close()

    def close(self, error: BaseException | None) -> None:
        if self.writer is not None:  # the run failed or was stopped: what can still be written is
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception as err:  # the run's own error is the news
                log.warning("tensorboard: could not close the event file in %s: %s", self.folder, first_line(err))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
