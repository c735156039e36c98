"""Stop requests: SIGINT, SIGTERM (what a scheduler sends before it stops a job) and SIGUSR2
(submitit's warning before a SLURM time limit) set a flag that the training loop and the
evaluation poll at safe points (after a step, between chunks of importance samples); the run
then writes its checkpoint and exits with 128 + the signal.

A command installs its `StopRequests` first thing, so a signal during start-up is a stop
request too, never a KeyboardInterrupt, and hands the previous handlers back when it ends (or,
in the `vaerun` command's own process, leaves the signals ignored while it exits). The
first signal to arrive sets the exit status; later ones while stopping are noted and ignored,
so the checkpoint is always written.

Python runs the handlers of signals that arrive together (while the main thread is inside one
long torch call) in the order of their numbers, not of their arrival: SIGTERM then SIGINT
10 ms apart would be handled as SIGINT first. The C-level handler writes each signal's number
to the wakeup fd (`signal.set_wakeup_fd`) the moment it arrives, so the first handler reads the
arrival order back from there.

The handler logs nothing itself: a signal that lands while the main thread writes a log line
would write into the same file from within that write (logging's "--- Logging error ---",
a reentrant call). It queues its line (`SimpleQueue.put` is safe in a signal handler) for a
thread of the context's own, which logs it at once.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from typing import Any

from vaerun.errors import Interrupted

log = logging.getLogger("vaerun")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequests:
    """The stop signals turned into a flag while installed: `with StopRequests() as stop:`.
    Outside the main thread (where Python allows no handler) it installs nothing and is a
    flag no signal sets."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, saves: str = "checkpoint",
                 then_ignore: bool = False):
        self.signals = signals
        self.saves = saves  # what stopping writes, for the log line
        self.then_ignore = then_ignore  # at exit ignore the signals, not restore the old handlers
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._wakeup: tuple[int, int, int] | None = None  # (read end, write end, previous fd)
        self._lines: queue.SimpleQueue = queue.SimpleQueue()  # the handler's, for `_say`
        self._sayer: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (call it where stopping loses nothing)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _arrived_first(self, signum: int) -> int:
        """The first signal to arrive, read from the wakeup fd (else `signum`)."""
        if self._wakeup is None:
            return signum
        try:
            first = os.read(self._wakeup[0], 64)[:1]
        except BlockingIOError:
            return signum
        return first[0] if first and first[0] in self.signals else signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = self._arrived_first(signum)
            self._lines.put(("signal %d: stopping at the next safe point; %s", self.signum,
                             f"then writing the {self.saves}" if self.saves else
                             "nothing is saved"))
            if signum == self.signum:
                return
        elif signum == self.signum:  # the first signal's own handler, run after another's
            return
        self._lines.put(("signal %d: already stopping (on signal %d)", signum, self.signum))

    def _say(self) -> None:
        """Log the handler's lines, in this thread, until the context ends (None)."""
        while (line := self._lines.get()) is not None:
            log.warning(*line)

    def __enter__(self) -> StopRequests:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
            self._sayer = threading.Thread(target=self._say, name="vaerun-stop-lines", daemon=True)
            self._sayer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, signal.SIG_IGN if self.then_ignore else h)
        self._old = {}
        if self._wakeup is not None:
            r, w, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(r)
            os.close(w)
            self._wakeup = None
        if self._sayer is not None:  # every line said before the context ends
            self._lines.put(None)
            self._sayer.join()
            self._sayer = None
