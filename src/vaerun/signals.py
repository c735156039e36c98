"""Stop requests: SIGINT, SIGTERM (what a scheduler sends before it stops a job) and SIGUSR2
(submitit's warning before a SLURM time limit) set a flag that the training loop and the
evaluation poll at safe points (after a step, between chunks of importance samples); the run
then writes its checkpoint and exits with 128 + the signal.

A command installs its `StopRequests` first thing, so a signal during start-up is a stop
request too, never a KeyboardInterrupt, and hands the previous handlers back when it ends (or,
in the `vaerun` command's own process, leaves the signals ignored while it exits). The
first signal to be handled sets the exit status; later ones while stopping are noted and
ignored, so the checkpoint is always written.
"""

from __future__ import annotations

import logging
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

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (call it where stopping loses nothing)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("signal %d: stopping at the next safe point; %s", signum,
                        f"then writing the {self.saves}" if self.saves else "nothing is saved")
        else:
            log.warning("signal %d: already stopping (on signal %d)", signum, self.signum)

    def __enter__(self) -> StopRequests:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, signal.SIG_IGN if self.then_ignore else h)
        self._old = {}
