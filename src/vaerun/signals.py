"""Stop requests: SIGINT and SIGTERM (what a scheduler sends before it stops a job) set a flag
that the training loop and the evaluation poll at safe points (after a step, between chunks of
importance samples); the run then writes its checkpoint and exits with 128 + the signal."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from vaerun.errors import Interrupted

log = logging.getLogger("vaerun")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """A context manager that turns the stop signals into a flag for the length of a run."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (call it where stopping loses nothing)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: finishing this step, then writing the checkpoint", signum)

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
