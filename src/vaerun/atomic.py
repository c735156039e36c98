"""Atomic file writes: write to a temporary name in the same folder, then rename over the target,
so a kill at any instant leaves either the previous complete file or the new one."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".vaerun-"  # temporaries are .NAME.vaerun-XXXX.tmp: a pattern of vaerun's own
TEMP_GLOB = f".*{TEMP_MARK}*.tmp"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, and rename it onto `path`.
    Its folder is made if missing, but not the folder above it: a run directory removed while
    it runs is an OSError, not made again.
    The file gets the mode a plain open() would give it (0666 less the umask), not mkstemp's
    private 0600, so collaborators on a shared disk can read results."""
    path = Path(path)
    path.parent.mkdir(exist_ok=True)  # a folder of the run, never the run itself again
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: name the file it was for
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except RuntimeError as e:  # torch's zip writer on a full disk ("unexpected pos ...")
        Path(tmp).unlink(missing_ok=True)
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        st = os.statvfs(path.parent)
        code = errno.ENOSPC if st.f_bavail * st.f_frsize < 1 << 20 else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (NaN/Inf kept as JSON's NaN/Infinity)."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return write_atomic(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
