"""SIGINT (Ctrl-C) and SIGTERM, the same way in every phase of every command.

One mechanism, three behaviours:

    with StopRequest(at_once=True):   # a whole command (cli.main): a signal ends it at once by
        ...                           # raising Interrupted, so `finally`/cleanup code runs and the
                                      # CLI prints one line and exits 128 + the signal number
    with StopRequest() as signals:    # the training loop: the first signal only asks to stop
        ...signals.requested...       # after the step in progress (a checkpoint is saved then);
                                      # a second one raises Interrupted at once
    with deferred():                  # a few lines that must not be cut in half (the renames that
        ...                           # put a checkpoint in place): a signal waits until they end

`Interrupted` is a KeyboardInterrupt, so a SIGTERM takes every path a Ctrl-C takes. Checkpoint
and file writes are atomic and remove their temporary files on any exception, so stopping at
once never leaves a half-written checkpoint or a temporary folder.

Signal handlers print nothing: output from a handler can land inside another write to the
same stream. The loop says that it is stopping (mtl_cli/train.py).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal that ends what runs at once; exit code 128 + `signum` (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(err: BaseException) -> int:
    """The signal an interrupt came from: a plain KeyboardInterrupt is a SIGINT."""
    return getattr(err, "signum", signal.SIGINT)


def signal_name(err_or_signum: BaseException | int) -> str:
    signum = err_or_signum if isinstance(err_or_signum, int) else signal_of(err_or_signum)
    return signal.Signals(signum).name


def exit_code(err: BaseException) -> int:
    return 128 + signal_of(err)


def _main_thread() -> bool:
    # Signal handlers can only be set from the main thread (a test or a notebook may train elsewhere).
    return threading.current_thread() is threading.main_thread()


class StopRequest:
    """A context manager holding the first stop signal received (`signum`), or None.

    `at_once`: every signal raises Interrupted; otherwise only the second does. A second signal
    within `grace` seconds of the first is the same request: a launcher (torchrun) passes a Ctrl-C
    on to its workers, which got it from the terminal already.
    """

    def __init__(self, at_once: bool = False, grace: float = 0.0) -> None:
        self.at_once, self.grace = at_once, grace
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if _main_thread():
            self._previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def handle(self, signum: int, frame=None) -> None:
        if self.signum is not None and time.monotonic() - self._first < self.grace:
            return
        if self.at_once or self.signum is not None:
            raise Interrupted(signum)  # the second signal: stop at once
        self.signum, self._first = signum, time.monotonic()

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them to the handlers that were in place."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)
