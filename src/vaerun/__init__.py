"""vaerun: see, by experiment, what a VAE's reconstruction loss really is.

The Python API (docs/python.md): `vaerun.train`, `vaerun.evaluate`, `vaerun.load`, `vaerun.report`,
`vaerun.compose`, `vaerun.objective`, `vaerun.implied_sigma`, `vaerun.implied_beta`; bad input
raises `vaerun.UserError` (`vaerun.ConfigError` naming a key). Loaded when first used, so
`import vaerun` (and `vaerun --help`) stays light.
"""

import sys

if sys.platform == "win32":  # a run's folder is locked with flock, stopped by POSIX signals
    raise ImportError("vaerun runs on Linux and macOS; on Windows, install and run it in WSL")

__version__ = "0.2.0"
API = ("train", "evaluate", "load", "report", "compose", "objective", "implied_sigma",
       "implied_beta")
ERRORS = ("UserError", "ConfigError", "Refused", "DataError", "RunFailed", "NonFiniteError",
          "Interrupted")
__all__ = [*API, *ERRORS]


def __getattr__(name: str):  # noqa: ANN202 (PEP 562)
    if name in API:
        from vaerun import api

        return getattr(api, name)
    if name in ERRORS:
        from vaerun import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'vaerun' has no attribute {name!r}")
