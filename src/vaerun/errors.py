"""Errors a user can fix, and how a run ends otherwise. The CLI prints each as one `error:` line
and exits with its `exit_code`; Python callers (vaerun.api) get them raised."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (config, data, paths): one line, no traceback, exit status 2."""

    exit_code = 2


class Refused(UserError):
    """A run directory this command may not use (it holds another run, or is in use): nothing
    is written there."""


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str, message: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(message or f"{key}={value!r} is not allowed: {allowed}")


class DataError(UserError):
    """A data file is missing, truncated or fails its checksum."""


class RunFailed(Exception):
    """The run could not go on (exit status 3); its last good checkpoint is kept, its record
    says `failed` and why."""

    exit_code = 3


class NonFiniteError(RunFailed):
    """Training produced NaN or Inf."""


class OutOfMemory(RunFailed):
    """The device ran out of memory in a step the memory check thought would fit."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the checkpoint is written and the run exits with 128 + signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")
