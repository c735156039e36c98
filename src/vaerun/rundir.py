"""A run directory, owned here alone: its layout (every file name, once), vaerun's marker, the
lock one command holds, atomic writes, the checkpoint's I/O, and the records that a resume, an
evaluation or a report reads back (user input too, so read bounded).

A folder is vaerun's only if it carries vaerun's marker (`.vaerun`, written when vaerun makes or
takes it), never because it holds a familiar file name. Paths are resolved (`realpath`) before
any check: a symlink or `//` cannot lead a run into a system folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from vaerun.errors import ConfigError, Refused, UserError

SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin",
          "/sys", "/usr", "/var")  # no run is written into these, or below them
TEMP_MARK = ".vaerun-"  # temporaries are .NAME.vaerun-XXXX.tmp: a pattern of vaerun's own
MAX_RECORD = 1 << 20  # bytes of a record (yaml, json) read back at most
KEYS = ("model", "optimizer", "rng", "epoch", "step", "batch", "perm", "seconds", "seed",
        "status", "config")  # what every checkpoint holds


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: a record of a few lines cannot expand to gigabytes."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("a YAML alias (vaerun's records hold none)")
        return super().compose_node(parent, index)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, rename it onto `path`: a kill at
    any instant leaves the old file or the new one. Its folder is made if missing, not the one
    above it (a run directory removed while it runs is an error, not made again). The file gets
    the mode a plain open() gives (0666 less the umask), so collaborators can read results."""
    path = Path(path)
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: name the file it was for
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_error(e: OSError, fix: str) -> str:
    """A failed write as one line: a full disk or quota named as such, and the fix."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else (e.strerror or str(e))
    if full and e.strerror:
        what += f" ({e.strerror})"
    return f"could not write{' ' + os.fsdecode(e.filename) if e.filename else ''}: {what}; {fix}"


def read_bounded(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_RECORD + 1)
    if len(data) > MAX_RECORD:
        raise ValueError(f"larger than {MAX_RECORD} bytes")
    return data.decode()


def read_yaml(path: Path) -> Any:
    return yaml.load(read_bounded(path), Loader=_NoAliases)  # noqa: S506 (a SafeLoader)


def read_json(path: Path) -> Any:
    return json.loads(read_bounded(path))


class RunDir:
    """One run's folder (or a sweep's: `kind`), with every file name it holds."""

    MARKER = ".vaerun"
    CHECKPOINT = "checkpoints/last.pt"
    METRICS = "metrics.json"
    LOG = "train.log"
    LOCK = ".lock"
    OVERRIDES = ".hydra/overrides.yaml"  # Hydra's record of the run's command line
    CONFIG = ".hydra/config.yaml"
    KL = "kl_per_dim.json"
    IMAGES = "images"

    def __init__(self, path: str | os.PathLike):
        self.given = os.fspath(path)
        self.path = Path(os.path.realpath(os.path.expanduser(self.given)))
        self._fd: int | None = None
        self.claimed = False

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    # -- identity -----------------------------------------------------------------------------
    def kind(self) -> str | None:
        """"run" or "sweep" where vaerun's marker says so, else None."""
        try:
            mark = read_json(self.file(self.MARKER))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return mark.get("kind") if isinstance(mark, dict) and mark.get("vaerun") else None

    def mark(self, kind: str) -> None:
        """Make the folder if needed and mark it vaerun's `kind`."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind() != kind:
            self.write(self.MARKER, json.dumps({"vaerun": 1, "kind": kind}).encode())

    def check_place(self, key: str, kind: str = "run") -> None:
        """This folder may hold a vaerun `kind`: new, empty, or marked so; never a file, a
        system folder or a folder of the user's own files; its nearest existing folder writable."""
        here = str(self.path)
        if any(ord(c) < 32 or ord(c) == 127 for c in self.given):
            raise ConfigError(key, self.given, "a folder name with a control character (a "
                              "newline?) is not taken; write the path on one line")
        if here == "/" or any(here == s or here.startswith(s + "/") for s in SYSTEM):
            raise ConfigError(key, self.given, f"{here} is a system folder; choose a folder of your "
                              "own, e.g. under outputs/")
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(key, self.given, f"{here} is a file, not a folder; choose another path")
        names = sorted(os.listdir(here)) if self.path.is_dir() else []
        if names and self.kind() != kind:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ConfigError(key, self.given, f"{here} holds files vaerun did not write ({shown}; "
                              f"no vaerun {kind} marker); a {kind} directory is new, empty or "
                              f"vaerun's own: choose another folder")
        top = self.path
        while not top.exists():
            top = top.parent
        if not os.access(top, os.W_OK):
            raise ConfigError(key, self.given, f"{top} is not writable (read-only, or not yours); "
                              "choose another folder")

    # -- files ----------------------------------------------------------------------------------
    def write(self, name: str, data: bytes) -> Path:
        return write_atomic(self.file(name), data)

    def write_json(self, name: str, obj: Any) -> Path:
        """Indented JSON (NaN and infinities as JSON's NaN and Infinity)."""
        return self.write(name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def metrics(self) -> dict[str, Any]:
        """metrics.json ({} if there is none); a UserError if it is no record of a run."""
        path = self.file(self.METRICS)
        if not path.exists():
            return {}
        try:
            metrics, what = read_json(path), ""
        except IsADirectoryError:
            metrics, what = None, "a directory"
        except (OSError, ValueError, UnicodeDecodeError) as e:
            metrics, what = None, f"no readable JSON ({type(e).__name__})"
        if not isinstance(metrics, dict):
            raise UserError(f"{path} is not vaerun's record of a run: it is "
                            f"{what or 'a ' + type(metrics).__name__}; move it away (vaerun writes "
                            "it anew on the next train with trainer.resume=true or eval)")
        return metrics

    def record(self, name: str, ok: Callable[[Any], bool], what: str) -> Any:
        """A yaml record (`.hydra/...`), None if absent; a UserError if unreadable or not `what`."""
        path = self.file(name)
        if not path.is_file():
            return None
        try:
            value = read_yaml(path)
        except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UserError(f"{path} is unreadable ({type(e).__name__}); restore it, or delete it "
                            "(the checkpoint holds the run's config)") from None
        if not ok(value):
            raise UserError(f"{path} is not {what}; restore it, or delete it (the checkpoint holds "
                            "the run's config)")
        return value

    def overrides(self) -> list[str]:
        """The run's recorded command-line overrides ([] if none)."""
        ok = lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v)  # noqa: E731
        return self.record(self.OVERRIDES, ok, "a list of overrides") or []

    def clean_temporaries(self) -> None:
        """Remove the temporaries a writer killed mid-write left (vaerun's pattern only; call
        it holding the lock, when no writer runs)."""
        for folder in (self.path, self.file("checkpoints"), self.file(self.IMAGES)):
            for p in folder.glob(f".*{TEMP_MARK}*.tmp") if folder.is_dir() else ():
                p.unlink(missing_ok=True)

    # -- the checkpoint -------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically; serialised in memory first, so a full disk is an OSError naming ENOSPC."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.write(self.CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, read with weights_only (no code in it runs); UserError if it is none."""
        import torch

        path = self.file(self.CHECKPOINT)
        try:
            with warnings.catch_warnings():  # torch's advice on weights_only: the line says it
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"no checkpoint at {path}; train a run first (vaerun train)") from None
        except Exception as e:  # noqa: BLE001 (an unpickling refusal, a torn file, ...)
            raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to "
                            "start the run again") from None
        missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else ["all"]
        if not missing and not isinstance(state["config"], dict):
            missing = ["a config"]
        if missing:
            raise UserError(f"checkpoint {path} is not a vaerun checkpoint (it lacks "
                            f"{', '.join(missing)}); delete it to start the run again")
        return state

    def fits(self, apply: Callable[[], Any]) -> None:
        """Run `apply()` (loading the checkpoint's states into a model, ...): a checkpoint with
        missing keys or wrong shapes becomes one UserError naming the file."""
        try:
            apply()
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"checkpoint {self.file(self.CHECKPOINT)} does not fit this run "
                            f"({first[:200]}); delete it to start the run again, or use the "
                            "config it was written with") from None

    # -- one command at a time ------------------------------------------------------------------
    def check_free(self) -> None:
        """Refused, naming the holder, if another command holds the folder now."""
        if self.path.is_dir():
            with self.locked("check"):
                pass

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[RunDir]:
        """Hold the folder's lock (flock on the folder itself) for the block; `claim()` then
        names the holder. Refused, naming the holder, while another command holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Refused(f"{self.path} is in use by {self._holder()}; wait for it to end (or "
                          "stop it), then run this again") from None
        self._fd, self.command = fd, command
        try:
            yield self
        finally:
            if self.claimed:
                self.file(self.LOCK).unlink(missing_ok=True)
            self.claimed, self._fd = False, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _holder(self) -> str:
        try:
            pid, command = self.file(self.LOCK).read_text().split()[:2]
            os.kill(int(pid), 0)  # alive? (a file left by an ended holder names no one)
            return f"vaerun {command} (pid {pid})"
        except (OSError, ValueError):
            return "another vaerun process"

    def claim(self) -> None:
        """Say who holds the lock, once the command has accepted the folder."""
        self.write(self.LOCK, f"{os.getpid()} {self.command}\n".encode())
        self.claimed = True

