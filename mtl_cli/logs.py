"""The `mtl` log (rich on the terminal, train.log in the run directory) and the training progress bar."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtl_cli.writers import WriteError, write_fault, writing

log = logging.getLogger("mtl")


def setup_logging(path: Path | None) -> None:
    from rich.logging import RichHandler

    log.setLevel(logging.INFO)
    log.propagate = False
    # Hydra reconfigures logging before every job of a sweep, disabling loggers that already exist.
    log.disabled = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.addHandler(RichHandler(show_path=False, show_time=False, markup=False))
    if path is not None:
        with writing(path):  # a read-only run directory: one line, not logging's traceback
            fh = RunLog(path, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


class RunLog(logging.FileHandler):
    """train.log. A record that cannot be written (a full disk) stops the file, and `check_log`
    raises it as one line where the run can stop cleanly; logging's own answer would be a
    traceback on stderr for every later record."""

    failure: WriteError | None = None
    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        fault = write_fault(err, Path(self.baseFilename)) if err is not None else None
        if fault is None:  # not the disk: a bad log call, logging's own report
            return super().handleError(record)
        self.broken, self.failure = True, WriteError(Path(self.baseFilename), *fault)


def check_log() -> None:
    """Raise the WriteError of a train.log write that failed since the last check (once)."""
    for handler in log.handlers:
        if isinstance(handler, RunLog) and handler.failure is not None:
            failure, handler.failure = handler.failure, None
            log.removeHandler(handler)  # written no more; the terminal still gets the records
            try:
                handler.close()
            except OSError:
                pass  # what is buffered cannot be written either
            raise failure


class ProgressBar:
    """The bar's line (losses, examples/s) and a log line every `log_every` steps."""

    def __init__(self, progress: Any, bar: Any, log_every: int) -> None:
        self.progress, self.bar, self.log_every = progress, bar, log_every
        self.start, self.examples = time.perf_counter(), 0

    def advance(self, state: Any, step: Any) -> None:
        self.examples += sum(step.examples.values())
        rate = self.examples / (time.perf_counter() - self.start)
        losses = " ".join(f"{n}={v:.3f}" for n, v in state.running_loss.items())
        self.progress.update(self.bar, advance=1, info=f"loss {losses} | {rate:.0f} ex/s")
        if state.step % self.log_every == 0:
            log.info("step %d loss %s %.1f ex/s", state.step, losses, rate)


@contextmanager
def progress_bar(show: bool, total: int, done: int, log_every: int) -> Iterator[ProgressBar]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
    ]  # fmt: skip
    with Progress(*columns, disable=not show, transient=False) as progress:
        yield ProgressBar(progress, progress.add_task("train", total=total, completed=done, info=""), log_every)
