"""Stop requests: SIGINT, SIGTERM (what a scheduler sends before it stops a job) and SIGUSR2
(submitit's warning before a SLURM time limit) set a flag
that the training loop and the evaluation poll at safe points (after a step, between chunks of
importance samples); the run then writes its checkpoint and exits with 128 + the signal.

One `STOP` serves the whole process: the CLI installs it first thing, so a signal that arrives
during start-up is a stop request too, never a KeyboardInterrupt; later signals while stopping
are noted and ignored, so the checkpoint is always written, and the exit status is always that
of the first signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from vaerun.errors import Interrupted

log = logging.getLogger("vaerun")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequests:
    """The stop signals turned into a flag, for as long as it is installed.

    Python runs the handlers of signals that are pending together in the order of their
    numbers, not of their arrival (SIGINT's before SIGTERM's): the order of arrival is read
    from the wakeup fd, to which the C-level handler writes each signal's number as it comes."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._wakeup: tuple[int, int, int] | None = None  # (read fd, write fd, the old fd)
        self._seen: set[int] = set()  # signals taken as first whose own handler has not run

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def installed(self) -> bool:
        return bool(self._old)

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (call it where stopping loses nothing)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _earliest(self, signum: int) -> int:
        """The first stop signal to arrive since the last handler ran (`signum` if the wakeup
        fd has none: not installed, or its byte not written yet)."""
        if self._wakeup is None:
            return signum
        try:
            data = os.read(self._wakeup[0], 4096)
        except BlockingIOError:
            data = b""
        return next((b for b in data if b in self.signals), signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum in self._seen:  # an earlier handler found it first in the wakeup fd
            self._seen.discard(signum)
            return
        first = self._earliest(signum)
        if self.signum is None:
            self.signum = first
            log.warning("signal %d: finishing this step, then writing the checkpoint", first)
            if first == signum:
                return
            self._seen.add(first)
        log.warning("signal %d: already stopping (on signal %d); the checkpoint is being "
                    "written", signum, self.signum)

    def install(self) -> bool:
        """Handle the stop signals from now on (main thread only); True if this call did."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        self._seen.clear()  # a handler that never ran while the last install lasted
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
        self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return True

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        if self._wakeup is not None:
            r, w, old = self._wakeup
            signal.set_wakeup_fd(old)
            os.close(r)
            os.close(w)
            self._wakeup = None

    @contextlib.contextmanager
    def active(self) -> Iterator[StopRequests]:
        """Installed for the block (if it was not already: then it stays as it was)."""
        mine = self.install()
        try:
            yield self
        finally:
            if mine:
                self.uninstall()


STOP = StopRequests()
