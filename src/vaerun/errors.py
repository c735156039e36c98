"""Errors a user can fix. The CLI prints them as one `error:` line and exits with `exit_code`."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (config, data, paths): one line, no traceback, exit status 2."""

    exit_code = 2


class Refused(UserError):
    """A run directory this command may not use (it holds another run, or is in use): nothing
    is written there."""


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataError(UserError):
    """A data file is missing, truncated or fails its checksum."""


class NonFiniteError(Exception):
    """Training produced NaN or Inf; the run stops, keeping its last good checkpoint."""

    exit_code = 3


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the checkpoint is written and the run exits with 128 + signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")
