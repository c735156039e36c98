"""Atomic file writes: write to a temporary name in the same folder, then rename over the target,
so a kill at any instant leaves either the previous complete file or the new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (NaN/Inf kept as JSON's NaN/Infinity)."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return write_atomic(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)
