"""A run directory held by one command at a time.

`RunLock` takes an exclusive lock (flock on the directory itself, so a refused command writes
nothing there) for one `vaerun train` or `vaerun eval`; the holder records its pid in `.lock`
once it has the lock, so another command's refusal can name it. Holding the lock, a command may
clean the temporary files a killed writer left behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vaerun.atomic import TEMP_GLOB, write_atomic
from vaerun.errors import UserError

PID_FILE = ".lock"


class RunLock:
    """`with RunLock(run_dir, "train"):` or a UserError naming the command that holds it."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.run_dir} is in use by {self.holder()}; wait for it to end "
                            "(or stop it), then run this again") from None
        self.fd = fd
        return self

    def holder(self) -> str:
        try:
            pid, command = (self.run_dir / PID_FILE).read_text().split()[:2]
            os.kill(int(pid), 0)  # alive? (a file left by an ended holder names no one)
            return f"vaerun {command} (pid {pid})"
        except (OSError, ValueError):
            return "another vaerun process"

    def claim(self) -> None:
        """Say who holds the lock (once the command has accepted the directory)."""
        text = f"{os.getpid()} {self.command}\n"
        write_atomic(self.run_dir / PID_FILE, lambda f: f.write(text.encode()))
        self.claimed = True

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            if getattr(self, "claimed", False):
                (self.run_dir / PID_FILE).unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporaries (`.NAME.vaerun-XXXX.tmp`, vaerun's own pattern) that a writer
    killed mid-write left; no other file (call it holding the lock: then no writer runs)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "images"):
        for p in folder.glob(TEMP_GLOB) if folder.is_dir() else ():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_files(run_dir: Path, files: dict[str, str]) -> None:
    """Write text files (e.g. `.hydra/config.yaml`) into the run directory, atomically."""
    for name, text in files.items():
        write_atomic(run_dir / name, lambda f, text=text: f.write(text.encode()))
