"""A run directory, owned here alone: its layout (each file name, once), vaerun's marker, the lock
one command holds, atomic writes, the checkpoint's I/O, and the records that a resume, an
evaluation or a report reads back (user input too: read bounded, YAML without aliases).

A folder is vaerun's only by vaerun's marker (`.vaerun`, written when vaerun makes or takes it),
never because it holds a familiar file name; paths are resolved (`realpath`) before any check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from vaerun.errors import ConfigError, Refused, UserError

SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin",
          "/sys", "/usr", "/var")  # no run is written into these, or below them
TEMP = ".vaerun-"  # temporaries are .NAME.vaerun-XXXX.tmp: a pattern of vaerun's own
IN_PLACE = ("config.yaml", "hydra.yaml", "overrides.yaml", "multirun.yaml", "train.log")  # Hydra
# opens these where they are (to rewrite or append), the rest is written by rename
KEYS = ("model", "optimizer", "rng", "epoch", "step", "batch", "perm", "seconds", "seed",
        "status", "config")  # what every checkpoint holds
HELD: set[Path] = set()  # the folders whose lock this process holds
COUNTS = {"epoch": int, "step": int, "batch": int, "seconds": float, "seed": int,
          "wall_seconds": float}  # a checkpoint's counts: numbers >= 0, in int64 (if there)


class _NoAliases(yaml.SafeLoader):
    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (PyYAML's)
        if self.check_event(yaml.AliasEvent):  # a few lines must not expand to gigabytes
            raise yaml.YAMLError("a YAML alias (vaerun's records hold none)")
        return super().compose_node(parent, index)


class NotARegularFile(ValueError):
    pass


def regular(path: str | os.PathLike) -> int:
    """`path` opened to read, if it is a regular file (NotARegularFile otherwise): a FIFO or a
    device left in a run's folder would block the open or the read, past Ctrl-C."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO's open returns
    if not stat.S_ISREG(mode := os.fstat(fd).st_mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "a directory", os.fspath(path))
        raise NotARegularFile(os.fspath(path))
    return fd


def read_bounded(path: Path, most: int = 1 << 20) -> str:
    with os.fdopen(regular(path), "rb") as f:
        data = f.read(most + 1)
    if len(data) > most:
        raise ValueError(f"larger than {most} bytes")
    return data.decode()


def read_json(path: Path) -> Any:
    return json.loads(read_bounded(path))


def write_atomic(path: Path, data: bytes) -> Path:
    """`data` into a temporary file beside `path`, fsynced, renamed onto it: a kill at any instant
    leaves the old file or the new. The folder is made if missing, not the one above it (a run
    removed while it runs is an error); the mode is a plain open()'s (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP}", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, say: name the file it was for
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    return path


def write_error(e: OSError, fix: str) -> str:
    """A failed write as one line: a full disk or quota named so whatever space is left."""
    what = e.strerror or str(e)
    what = f"the disk is full ({what})" if e.errno in (errno.ENOSPC, errno.EDQUOT) else what
    return f"could not write{' ' + os.fsdecode(e.filename) if e.filename else ''}: {what}; {fix}"


class RunDir:
    """One run's folder (or a sweep's: its `kind`), with every file name it holds."""

    MARKER, CHECKPOINT, METRICS, LOG, LOCK = (".vaerun", "checkpoints/last.pt", "metrics.json",
                                              "train.log", ".lock")
    OVERRIDES, CONFIG, HYDRA = ".hydra/overrides.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml"
    KL, IMAGES = "kl_per_dim.json", "images"

    def __init__(self, path: str | os.PathLike):
        self.given = os.fspath(path)
        self.path = Path(os.path.realpath(os.path.expanduser(self.given)))
        self.claimed, self.command = False, ""

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def kind(self) -> str | None:
        """"run" or "sweep" where vaerun's marker says so, else None."""
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            mark = read_json(self.file(self.MARKER))
            return mark.get("kind") if isinstance(mark, dict) and mark.get("vaerun") else None
        return None

    def mark(self, kind: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind() != kind:
            self.write(self.MARKER, json.dumps({"vaerun": 1, "kind": kind}).encode())

    def check_place(self, key: str, kind: str = "run") -> None:
        """This folder may hold a vaerun `kind`: new, empty or marked so; never a file, a system
        folder or a folder of the user's files; its nearest existing folder writable."""
        here, top, names = str(self.path), self.path, []
        with contextlib.suppress(OSError):
            names = sorted(os.listdir(here)) if self.path.is_dir() else []
        for bad, why in (
                (any(ord(c) < 32 or ord(c) == 127 for c in self.given), "a folder name with a "
                 "control character (a newline?) is not taken; write the path on one line"),
                (here == "/" or any(here == s or here.startswith(s + "/") for s in SYSTEM),
                 f"{here} is a system folder; choose a folder of your own, e.g. under outputs/"),
                (self.path.exists() and not self.path.is_dir(),
                 f"{here} is a file, not a folder; choose another path"),
                (names and self.kind() not in (kind, None), f"{here} is a vaerun "
                 f"{self.kind()}, not a {kind}: choose another folder"),
                (names and self.kind() != kind, f"{here} holds files vaerun did not write "
                 f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; no vaerun {kind} "
                 f"marker); a {kind} directory is new, empty or vaerun's own: choose another")):
            if bad:
                raise ConfigError(key, self.given, why)
        if names:
            self.check_links(key)
        while not top.exists():
            top = top.parent
        if not os.access(top, os.W_OK):
            raise ConfigError(key, self.given, f"{top} is not writable (read-only, or not yours); "
                              "choose another folder")

    def check_links(self, key: str) -> None:
        """Refuse a folder that holds a symbolic link, or a file Hydra writes in place with a
        second name (a hard link): vaerun makes neither, and writing through one would change a
        file outside the folder (a tampered run's `.hydra/hydra.yaml` -> ~/.bashrc). Nor a FIFO,
        a socket or a device, where opening train.log to append would wait for ever."""
        for top, dirs, files in os.walk(self.path):  # links are listed, never entered
            for name in dirs + files:
                p = Path(top, name)
                try:
                    mode, names = (s := p.lstat()).st_mode, s.st_nlink
                except FileNotFoundError:  # gone since the listing (a temporary renamed)
                    continue
                odd = not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode))
                if stat.S_ISLNK(mode) or odd or (name in IN_PLACE and names > 1):
                    what = "not a file (a FIFO, a socket or a device)" if odd else "a link"
                    raise ConfigError(key, self.given, f"{p} is {what}; vaerun makes none in "
                                      "its folders and writes through none: remove it")
            dirs[:] = [d for d in dirs if d != ".submitit"]  # submitit's own, with its links

    def write(self, name: str, data: bytes) -> Path:
        return write_atomic(self.file(name), data)

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write(name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def metrics(self) -> dict[str, Any]:
        """metrics.json ({} if there is none); a UserError if it is no record of a run."""
        what = ""
        try:
            metrics = read_json(self.file(self.METRICS))
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            metrics, what = None, "a directory"
        except (OSError, ValueError, UnicodeDecodeError) as e:
            metrics, what = None, f"no readable JSON ({type(e).__name__})"
        steps = (metrics.get("steps") or {}) if isinstance(metrics, dict) else None
        if isinstance(metrics, dict) and not (isinstance(steps, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in steps.values())):
            what = "a record whose steps are not a table of step numbers"
        if what or not isinstance(metrics, dict):
            raise UserError(f"{self.file(self.METRICS)} is not vaerun's record of a run: it is "
                            f"{what or 'a ' + type(metrics).__name__}; move it away (vaerun "
                            "writes it anew on the next train with trainer.resume=true or eval)")
        return metrics

    def record(self, name: str, ok: Callable[[Any], bool], what: str) -> Any:
        """A yaml record (`.hydra/...`), None if absent; a UserError if unreadable or not `what`."""
        path, fix = self.file(name), "restore it, or delete it (the checkpoint holds the run's config)"
        if not path.exists():
            return None
        try:
            value = yaml.load(read_bounded(path), Loader=_NoAliases)  # noqa: S506 (a SafeLoader)
        except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UserError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None
        if not ok(value):
            raise UserError(f"{path} is not {what}; {fix}")
        return value

    def overrides(self) -> list[str]:
        """The run's recorded command-line overrides ([] if none)."""
        ok = lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v)  # noqa: E731
        return self.record(self.OVERRIDES, ok, "a list of overrides") or []

    def searchpath(self) -> list[str]:
        """The folders of the user's configs the run was composed with (hydra.searchpath, and
        -cd as Hydra's record names it), which overrides.yaml does not hold ([] if none)."""
        at = lambda d, k: d.get(k) if isinstance(d, dict) else None  # noqa: E731
        h = at(self.record(self.HYDRA, lambda v: isinstance(v, dict), "a record of Hydra's"),
               "hydra")
        paths, sources = at(h, "searchpath") or [], at(at(h, "runtime"), "config_sources") or []
        cd = [at(s, "path") for s in sources if at(s, "provider") == "command-line"] \
            if isinstance(sources, list) else [None]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in [*paths, *cd]):
            raise UserError(f"{self.file(self.HYDRA)} is not a record of Hydra's (its searchpath "
                            "or config_sources); restore it, or delete it")
        return [*paths, *(f"file://{p}" for p in cd)]

    def clean_temporaries(self) -> None:
        """Remove what a writer killed mid-write left (vaerun's pattern only; under the lock)."""
        for folder in (self.path, self.file("checkpoints"), self.file(self.IMAGES)):
            for p in folder.glob(f".*{TEMP}*.tmp") if folder.is_dir() else ():
                p.unlink(missing_ok=True)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically, serialised in memory first: a full disk is an OSError (ENOSPC)."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.write(self.CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, read with weights_only (no code in it runs); UserError if it is none."""
        import torch

        from vaerun.config import is_number

        path, fix = self.file(self.CHECKPOINT), "delete it to start the run again"
        try:
            with warnings.catch_warnings():  # torch's advice on weights_only: the line says it
                warnings.simplefilter("ignore")
                with os.fdopen(regular(path), "rb") as f:
                    state = torch.load(f, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"no checkpoint at {path}; train a run first (vaerun train)") from None
        except Exception as e:  # noqa: BLE001 (an unpickling refusal, a torn file, ...)
            raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); {fix}") from None
        missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else ["all"]
        def count(v: Any, kind: type) -> bool:
            return is_number(v) and 0 <= v < 2**63 and (kind is float or isinstance(v, int))

        perm = state.get("perm") if isinstance(state, dict) else None
        wrong = [] if missing else [k for k, ok in {
            **{k: count(state[k], kind) for k, kind in COUNTS.items() if k in state},
            "config": isinstance(state["config"], dict), "status": isinstance(state["status"], str),
            "data": isinstance(state.get("data") or "", str),
            "perm": perm is None or (isinstance(perm, torch.Tensor) and perm.dim() == 1
                                     and not perm.is_floating_point())}.items() if not ok]
        if missing or wrong:
            raise UserError(f"checkpoint {path} is not a vaerun checkpoint (it lacks "
                            f"{', '.join(missing) or 'a valid ' + ', '.join(wrong)}); {fix}")
        return state

    def fits(self, apply: Callable[[], Any]) -> None:
        """`apply()` (the checkpoint's states loaded into a model, ...): missing keys or wrong
        shapes become one UserError naming the file."""
        try:
            apply()
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"checkpoint {self.file(self.CHECKPOINT)} does not fit this run "
                            f"({first}); delete it to start the run again, or use the config it "
                            "was written with") from None

    def check_free(self) -> None:
        """Refused, naming the holder, if another command holds the folder now."""
        if self.path.is_dir():
            with self.locked("check"):
                pass

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[RunDir]:
        """The folder's lock (flock on the folder) for the block; `claim()` names the holder.
        Within a block of this process's own (the command holds it from its check on, then the
        run), the lock is held already."""
        self.command, fd = command, None if self.path in HELD else self._flock()
        try:
            yield self
        finally:
            if self.claimed:
                self.file(self.LOCK).unlink(missing_ok=True)
            self.claimed = False
            if fd is not None:
                HELD.discard(self.path)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _flock(self) -> int:
        """Take the folder's lock (made if missing): its file descriptor, or Refused naming the
        process that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = "another vaerun process"
            with contextlib.suppress(OSError, ValueError):
                pid, other = read_bounded(self.file(self.LOCK), 200).split()[:2]
                os.kill(int(pid), 0)  # alive? (a file an ended holder left names no one)
                holder = f"vaerun {other} (pid {pid})"
            raise Refused(f"{self.path} is in use by {holder}; wait for it to end (or stop it), "
                          "then run this again") from None
        HELD.add(self.path)
        return fd

    def claim(self) -> None:
        """Say who holds the lock, once the command has accepted the folder."""
        self.write(self.LOCK, f"{os.getpid()} {self.command}\n".encode())
        self.claimed = True
