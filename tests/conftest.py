"""Shared helpers: run the real CLI in-process (Hydra's global state cleared each time) or as a
subprocess, and read a run's TensorBoard events back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pytest-xdist's workers (-n 2 on 2 cores): each gets its share of the cores for torch's threads,
# in its own process and in the vaerun processes it starts, else the workers' thread pools fight
# over the cores (the suite took 483 s instead of 337 s). A test about threads sets them itself.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

import pytest
from hydra.core.global_hydra import GlobalHydra

from vaerun import cli

# A tiny real-MNIST run: fast enough for CI, big enough for every code path.
SMALL = ["dataset.n_train=512", "dataset.n_test=256", "trainer.epochs=2", "trainer.log_every=2",
         "trainer.batch_size=64", "eval.iwae_k=4", "eval.batch_size=128"]


def mnist_root(folder: Path) -> Path:
    """`folder`, made, holding a copy of the bundled MNIST's .gz files: a `dataset.root` whose
    files a test may take away."""
    from importlib import resources

    folder.mkdir()
    for f in resources.files("vaerun.bundled").joinpath("mnist").iterdir():
        if f.name.endswith(".gz"):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture
def vaerun(tmp_path, monkeypatch):
    """Call `vaerun ...` in this process, from an empty working directory."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> int:
        GlobalHydra.instance().clear()
        try:
            return cli.main(list(args))
        finally:
            GlobalHydra.instance().clear()

    return run


def run_process(args: list[str], cwd: Path, env: dict | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    """`python -m vaerun ...` as its own process (for exit codes, signals, stderr)."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "vaerun", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, **kwargs)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's event files: tag -> [(step, value), ...], in the order they
    were written. (TensorBoard reads a folder's event files in name order; two files that one
    process opens within a second differ only in a counter, `...pid.9` sorting after
    `...pid.10`, as an in-process train then eval can make them.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)]
            for tag in acc.Tags()["scalars"]}


class Lines:
    """A process's output (one stream) read in a thread, so a test can wait for an event in it
    (a log line, a progress line) instead of sleeping; `wait` fails saying what it waited for."""

    def __init__(self, stream):
        import queue
        import threading

        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait(self, pattern: str, timeout: float = 180) -> str:
        """The first line from now on that matches the regex `pattern`."""
        import queue
        import re
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or not line and time.monotonic() >= deadline:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s "
                                     f"(the process {'ended' if line is None else 'ran on'}); "
                                     f"its last lines: {''.join(self.seen[-5:])}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def rest(self) -> str:
        """Everything else the process writes, once it has ended."""
        self._thread.join(timeout=60)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)
