"""What a vaerun process sets up in torch: every CPU thread flushes subnormal floats (the
thread pool inherits it), and a command that never steps an optimizer never imports
torch._dynamo. Each in a fresh process, since both are set once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SMALL

# A subnormal float in every element, made without torch (whose first parallel op starts its
# thread pool); then `* 1.0` split over 2 threads: a thread that flushes writes 0, one that does
# not writes 1e-39. Counted as integers, which no flush setting changes.
CHECK = """
import sys
import numpy as np
import torch
from vaerun import cli
tiny = torch.from_numpy(np.full(1 << 22, 1e-39, dtype=np.float32))
{setup}
print(int(((tiny * 1.0).view(torch.int32) != 0).sum()), "torch._dynamo" in sys.modules)
"""


def check(setup: str, cwd) -> tuple[int, bool]:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(setup=setup)], cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, dynamo = proc.stdout.split()[-2:]
    return int(kept), dynamo == "True"


def test_every_thread_of_a_run_and_of_an_eval_flushes_subnormal_floats(tmp_path):
    args = [*SMALL, "trainer.epochs=0", "trainer.threads=2", "hydra.run.dir=run"]
    kept, _ = check(f"assert cli.main(['train', *{args!r}]) == 0", tmp_path)
    assert kept == 0
    kept, dynamo = check("assert cli.main(['eval', 'run_dir=run', 'eval.iwae_k=2', "
                         "'eval.quality_images=0', 'trainer.threads=2']) == 0", tmp_path)
    assert kept == 0
    # an evaluation builds no optimizer, so torch.optim never loads it (sample quality does:
    # torchmetrics imports torchvision, whose ops import torch._dynamo)
    assert not dynamo


def test_the_check_sees_a_thread_that_does_not_flush(tmp_path):
    """Flushing switched on after the pool started reaches the calling thread only."""
    kept, _ = check("torch.set_num_threads(2); torch.ones(1 << 22).mul_(2); "
                    "torch.set_flush_denormal(True)", tmp_path)
    assert 0 < kept < 1 << 22


def test_an_in_process_command_hands_back_handlers_and_settings(vaerun, tmp_path):
    """cli.main(["train", ...]) in a caller's process (a notebook, pytest): its SIGINT, SIGTERM
    and SIGUSR2 handlers, torch's thread count and determinism are as the caller had them."""
    import signal

    import torch

    mine = lambda signum, frame: None  # noqa: E731
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    old = {s: signal.signal(s, mine) for s in sigs}
    threads = torch.get_num_threads()
    try:
        assert vaerun("train", *SMALL, "trainer.epochs=1", f"trainer.threads={threads + 1}",
                      "trainer.deterministic=true", "hydra.run.dir=run") == 0
        assert vaerun("eval", "run_dir=run", "eval.iwae_k=2", f"trainer.threads={threads + 1}") == 0
        assert all(signal.getsignal(s) is mine for s in sigs)
        assert torch.get_num_threads() == threads
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# The pages of libtorch_cpu's read-only data that this process has mapped: Rss against Size
# of those mappings in /proc/self/smaps (kB).
MAPPED = """
import re, sys
import torch
from vaerun import cli
def mapped():
    rss = size = 0
    head = None
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            head = line.split()
        elif head and head[1] == "r--p" and head[-1].endswith("/libtorch_cpu.so"):
            if line.startswith("Size:"):
                size += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss, size
before = mapped()
assert cli.main(sys.argv[1:]) == 0
print(*before, *mapped())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_a_cpu_run_maps_every_page_of_torchs_constants(tmp_path):
    """torch's AVX-512 kernels read constants with masked loads, which map no page where a lane
    is masked off; on an AMD Zen 4 each load of a page not mapped takes a slow path (log1p
    10x slower). A CPU run maps all of libtorch_cpu's read-only data first."""
    proc = subprocess.run([sys.executable, "-c", MAPPED, "train", *SMALL, "trainer.epochs=0",
                           "eval.iwae_k=0", "hydra.run.dir=run"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss_before, size, rss_after, size_after = map(int, proc.stdout.split()[-4:])
    assert size == size_after > 30_000  # kB: libtorch_cpu's read-only data, 64 MB in torch 2.14
    assert rss_before < 0.9 * size  # torch's import maps only what it reads
    assert rss_after == size
