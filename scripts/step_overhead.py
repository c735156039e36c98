#!/usr/bin/env python3
"""Seconds per training step, in one process: vaerun's own `Trainer.step` against the bare
loop's (bench.py's, with fused Adam), on the default model and data, at each batch size given;
and the ops each dispatches per step, counted with tests/test_gpu_ready.py's TorchDispatchMode.
On a GPU, where this model's steps are bound by the host's work, not the device's, the gap is
the host work vaerun adds per step.

    python scripts/step_overhead.py cpu 128 1024      # device, then batch sizes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]
import bench  # noqa: E402
from test_gpu_ready import Count, composed  # noqa: E402  (the op counter the tests use)

from vaerun import assemble  # noqa: E402
from vaerun.logs import RunLog  # noqa: E402
from vaerun.loop import Trainer  # noqa: E402
from vaerun.signals import StopRequests  # noqa: E402

N = 8192  # training images: enough batches of the largest size asked for


def vaerun_trainer(run: Path, device: str, batch: int) -> Trainer:
    cfg = composed(f"dataset.n_train={N}", "dataset.n_test=64", f"trainer.batch_size={batch}",
                   f"trainer.device={device}")
    session = assemble.start(assemble.checked(cfg), run)
    session.progress.perm = torch.randperm(N, generator=session.gen).to(session.device)
    return Trainer(session, RunLog(run), StopRequests())


def per_step(step, batches: int, device: str, n: int = 300) -> float:
    """Microseconds per step, the median of three timings of n steps each after a warm-up."""
    for b in range(50):
        step(b % batches)
    times = []
    for _ in range(3):
        bench.sync(device)
        t0 = time.perf_counter()
        for b in range(n):
            step(b % batches)
        bench.sync(device)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(times)[1]


def bare_step(x: torch.Tensor, perm: torch.Tensor, batch: int, device: str):
    """bench.py's bare loop, one step a call, on the same images in the same order."""
    model = bench.ExamplesVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(b: int) -> None:
        xb = x[perm[b * batch:(b + 1) * batch]]
        opt.zero_grad()
        recon, mu, logvar = model(xb)
        bench.examples_loss(recon, xb, mu, logvar).backward()
        opt.step()

    return step


def compare(device: str, batch: int) -> str:
    t = vaerun_trainer(Path(tempfile.mkdtemp()), device, batch)
    batches = N // batch
    bare = bare_step(t.s.data.train, t.p.perm, batch, device)
    ours, theirs = per_step(t.step, batches, device), per_step(bare, batches, device)
    counts = []
    for f in (t.step, bare):
        with Count() as c:
            f(1)
        counts.append(sum(c.ops.values()))
    t.runlog.close()
    return (f"{device} batch {batch}: vaerun step {ours:.0f} us ({counts[0]} ops), bare loop "
            f"with fused Adam {theirs:.0f} us ({counts[1]} ops): {ours / theirs:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device")
    parser.add_argument("batch_sizes", type=int, nargs="*", default=[128])
    a = parser.parse_args()
    device, sizes = a.device, a.batch_sizes
    for batch in sizes:
        print(compare(device, batch), flush=True)


if __name__ == "__main__":
    main()
