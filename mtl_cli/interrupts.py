"""SIGINT/SIGTERM during training: save a checkpoint, then stop.

The first signal asks the training loop to stop after the step in progress (it then saves
`checkpoints/last` and the metrics so far); a second SIGINT raises KeyboardInterrupt at once.
Checkpoint writes are atomic, so stopping at once never leaves a half-written checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """A context manager holding the first stop signal received (`signum`), or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be set from the main thread (a test or a notebook may train elsewhere).
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def handle(self, signum: int, frame=None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop at once
        self.signum = signum
        print(
            f"\nmtl: {signal.Signals(signum).name} received: saving a checkpoint after this step "
            "(interrupt again to stop at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None
