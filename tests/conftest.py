"""Shared helpers: run the real CLI in-process (Hydra's global state cleared each time) or as a
subprocess, and read a run's TensorBoard events back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from vaerun import cli

# A tiny real-MNIST run: fast enough for CI, big enough for every code path.
SMALL = ["dataset.n_train=512", "dataset.n_test=256", "trainer.epochs=2", "trainer.log_every=2",
         "trainer.batch_size=64", "eval.iwae_k=4", "eval.batch_size=128"]


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
    """Every scalar tag of a run's event files: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
