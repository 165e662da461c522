"""The `mtl` log (rich on the terminal, train.log in the run directory) and the console's progress displays.

Libraries' own log records and Python warnings (transformers' "Loading weights" notes, torch's
deprecations) go to train.log only: they are kept from the time training starts, before the run
directory exists, and written into train.log when it opens. The terminal shows mtl's own lines.

Progress on the terminal (rank 0, `trainer.progress`): a spinner while data loads and tokenizes
(`status`), the training bar, and a bar for each evaluation pass (`eval_progress`), which shares the
training bar's live display (rich allows one at a time).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtl_cli.writers import WriteError, write_fault, writing

log = logging.getLogger("mtl")

# Loggers whose records are the libraries' business: into train.log, not onto the terminal.
LIBRARIES = ("transformers", "datasets", "huggingface_hub", "peft", "torch", "accelerate", "py.warnings")
# Library records from before train.log opens (loading the encoder comes before the run directory).
_pending = logging.handlers.BufferingHandler(capacity=10_000)
_console = {"progress": False}  # whether this process shows progress displays (rank 0, trainer.progress)
_live: dict[str, Any] = {}  # the training bar's rich Progress while it is shown


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
    _route_libraries(next((h for h in log.handlers if isinstance(h, RunLog)), None))


def _route_libraries(run_log: logging.Handler | None) -> None:
    """Library records and warnings to `run_log` (train.log); until it exists, held in `_pending`."""
    logging.captureWarnings(True)
    try:  # transformers keeps a stderr handler and tqdm bars of its own
        import transformers.utils.logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for name in LIBRARIES:
        lib = logging.getLogger(name)
        lib.propagate = False
        for h in list(lib.handlers):
            if h is _pending or isinstance(h, RunLog):
                lib.removeHandler(h)
        lib.addHandler(run_log if run_log is not None else _pending)
    if run_log is not None:
        for record in _pending.buffer:
            run_log.handle(record)
        _pending.buffer.clear()


def show_progress(enabled: bool) -> None:
    """Whether this process draws progress displays from now on (rank 0 with trainer.progress)."""
    _console["progress"] = enabled


@contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner with `text` while a block runs (loading and tokenizing data); nothing when progress is off."""
    if not _console["progress"] or _live:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


@contextmanager
def eval_progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A transient bar of `total` evaluation batches; yields the function that advances it by one."""
    if not _console["progress"] or total <= 0:
        yield lambda: None
        return
    live = _live.get("progress")
    if live is not None:  # inside training: a second line of the training bar's display
        task = live.add_task(label, total=total, info="", name=label)
        try:
            yield lambda: live.advance(task)
        finally:
            live.remove_task(task)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


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
        TextColumn("{task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]  # fmt: skip
    with Progress(*columns, disable=not show, transient=False) as progress:
        if show:
            _live["progress"] = progress
        try:
            task = progress.add_task("train", total=total, completed=done, info="", name="train")
            yield ProgressBar(progress, task, log_every)
        finally:
            _live.clear()
