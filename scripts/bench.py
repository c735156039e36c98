#!/usr/bin/env python3
"""Training speed of vaerun against the usual VAE loop and the bare-maths floor.

On the default model (MLP 784-400-20, batch 128, Adam 1e-3, grey MNIST, Bernoulli decoder),
it measures seconds per epoch of:

  (a) vaerun: its own training loop, as `vaerun train` runs it, in a process of its own per
      epoch (resuming its run), read back from the epoch's own `time/epoch_seconds`: its
      default logging (TensorBoard every 50 steps, on-device meters, NaN guard, progress bar);
  (b) reference: the PyTorch examples VAE loop: torchvision `datasets.MNIST` over the bundled
      files, `ToTensor`, `DataLoader(batch_size=128, shuffle=True)`;
  (c) bare: the same model and loss on in-memory tensors, nothing else, as people write it
      (and the same with Adam's fused kernel, which vaerun uses by default); and, in a process
      of its own, with both of vaerun's speed settings: fused Adam and subnormal floats
      flushed to zero (which vaerun sets before torch starts its threads);
  (d) whole processes, as users run them: `vaerun train trainer.epochs=5` (start-up, 5 epochs,
      the end-of-run IWAE evaluation, sample quality and pictures) and the start-up alone
      (`vaerun train trainer.epochs=0 eval.iwae_k=0 eval.quality_images=0`), against the bare
      loop's 5 epochs; and, as the floor of any start-up, a process that only imports torch
      and builds a torch.optim optimizer (which imports torch._dynamo), and the bare loop (c)
      as a whole process (`--bare-process`: import torch, load the images, 5 epochs);

round-robin (one epoch, or one process, of each per round, a warm-up round first), as the
median (and min, max) over --epochs rounds. It also prints the model's matmul
FLOPs per epoch over `torch.mm`'s measured throughput here: the epoch time the maths alone would
need at that throughput. Writes the table as JSON (--json).

    python scripts/bench.py [--epochs 5] [--threads N] [--batch-size 128] [--device cpu|cuda]
                            [--compile] [--sweep-jobs N] [--json docs/bench.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

D, H, L = 784, 400, 20


class ExamplesVAE(nn.Module):
    """The PyTorch examples VAE (examples/vae/main.py), unchanged."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc21 = nn.Linear(H, L)
        self.fc22 = nn.Linear(H, L)
        self.fc3 = nn.Linear(L, H)
        self.fc4 = nn.Linear(H, D)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, D))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def examples_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, D), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def vaerun(*args: str) -> None:
    """`python -m vaerun ARGS` in a process of its own; its stderr is shown if it fails."""
    done = subprocess.run([sys.executable, "-m", "vaerun", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"vaerun {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(run_epoch, device: torch.device | str = "cpu"):
    """An epoch() that returns its own wall-clock seconds (the device's queue drained)."""

    def epoch() -> float:
        sync(device)
        t0 = time.perf_counter()
        run_epoch()
        sync(device)
        return time.perf_counter() - t0

    return epoch


def bench_reference(root: Path, batch_size: int, device: torch.device):
    from torchvision import datasets, transforms

    loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True)
    model = ExamplesVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch():
        model.train()
        for data, _ in loader:
            data = data.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(data)
            loss = examples_loss(recon, data, mu, logvar)
            loss.backward()
            opt.step()

    return timed(epoch, device)


def bench_bare(x: torch.Tensor, batch_size: int, compile_: bool, fused: bool = False):
    model = ExamplesVAE().to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def step(xb):
        opt.zero_grad()
        recon, mu, logvar = model(xb)
        loss = examples_loss(recon, xb, mu, logvar)
        loss.backward()
        opt.step()

    step_fn = torch.compile(step) if compile_ else step

    def epoch():
        for idx in torch.randperm(len(x), device=x.device).split(batch_size):
            step_fn(x[idx])

    return timed(epoch, x.device)


def bench_vaerun(out: Path, batch_size: int, device: str, threads: int | None, compile_: bool,
                 log_every: int | None = None):
    """vaerun's own training loop, one more epoch per call, each in its own `vaerun train`
    process resuming the run (so torch's threads are set up as a run sets them): returns the
    epoch's seconds as vaerun logs them (time/epoch_seconds), and the test evaluation's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = out / f"vaerun_{int(compile_)}_{log_every}"
    args = [f"trainer.batch_size={batch_size}", f"trainer.device={device}", "eval.iwae_k=0",
            "eval.quality_images=0",
            f"trainer.compile={str(compile_).lower()}", "trainer.resume=true",
            f"hydra.run.dir={run}"]
    args += [f"trainer.log_every={log_every}"] if log_every else []
    args += [f"trainer.threads={threads}"] if threads else []
    done = [0]
    eval_seconds: list[float] = []

    def epoch() -> float:
        done[0] += 1
        vaerun("train", f"trainer.epochs={done[0]}", *args)
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        eval_seconds.append(acc.Scalars("time/test_eval_seconds")[-1].value)
        last = acc.Scalars("time/epoch_seconds")[-1]  # less the compile, paid once a process
        compiled = (acc.Scalars("time/compile_seconds")
                    if "time/compile_seconds" in acc.Tags()["scalars"] else [])
        return last.value - sum(e.value for e in compiled if e.step == last.step)

    epoch.eval_seconds = eval_seconds  # type: ignore[attr-defined]
    return epoch


def _bare_child(conn, batch_size: int, threads: int | None) -> None:
    """A child process's bare loop with vaerun's two speed settings: subnormal floats flushed
    to zero in every thread (set before torch's thread pool starts) and fused Adam."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    from vaerun.data import MNIST

    epoch = bench_bare(MNIST(MNIST.Config(), "cpu").train, batch_size, False, fused=True)
    while conn.recv():
        conn.send(epoch())


def bench_bare_child(batch_size: int, threads: int | None):
    """`_bare_child` in a process of its own: each call runs one epoch there."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_child, args=(child, batch_size, threads), daemon=True)
    proc.start()

    def epoch() -> float:
        parent.send(True)
        return parent.recv()

    epoch.close = lambda: (parent.send(False), proc.join(30))  # type: ignore[attr-defined]
    return epoch


def bench_process(out: Path, name: str, args: list[str], threads: int | None, device: str):
    """A whole `vaerun train` process, start-up to exit, as users run it: returns its wall
    seconds (its metrics.json is kept in `.metrics`)."""
    count = [0]
    metrics: list[dict] = []

    def run() -> float:
        count[0] += 1
        run_dir = out / f"{name}_{count[0]}"
        extra = [f"trainer.threads={threads}"] if threads else []
        extra.append(f"trainer.device={device}")
        t0 = time.perf_counter()
        vaerun("train", *args, *extra, f"hydra.run.dir={run_dir}")
        seconds = time.perf_counter() - t0
        metrics.append(json.loads((run_dir / "metrics.json").read_text()))
        return seconds

    run.metrics = metrics  # type: ignore[attr-defined]
    return run


def bench_bare_process(batch_size: int, threads: int | None, device: str):
    """The bare loop (c) as a whole process, as people run such a script: import torch, load
    the images into memory, 5 epochs, exit."""
    extra = [f"--threads={threads}"] if threads else []
    extra.append(f"--device={device}")

    def run() -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--bare-process", f"--batch-size={batch_size}",
                        *extra], check=True)
        return time.perf_counter() - t0

    return run


def bench_torch_import():
    """A process that imports torch and builds one torch.optim optimizer (whose first use
    imports torch._dynamo), then exits: what any training process on torch pays at start-up."""
    code = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"

    def run() -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    return run


def startup(a) -> int:
    """`vaerun train trainer.epochs=0 eval.iwae_k=0 eval.quality_images=0` as a whole process
    against one that imports torch and builds an optimizer, round-robin, medians."""
    tmp = Path(tempfile.mkdtemp(prefix="vaerun-bench-"))
    loops = {"startup": bench_process(tmp, "startup", ["trainer.epochs=0", "eval.iwae_k=0",
                                                        "eval.quality_images=0"], a.threads,
                                      a.device),
             "torch_import": bench_torch_import()}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(a.epochs + 1):  # the first round warms the caches
        for name, run in loops.items():
            t = run()
            if r:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"startup_seconds": med["startup"], "torch_import_seconds": med["torch_import"],
              "ratio": med["startup"] / med["torch_import"], "times": times,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def seconds_per_call(fn, reps: int, device: torch.device) -> float:
    """Wall seconds per call of `fn()` over `reps` calls, after 3 warm-up calls, the device
    synchronised before and after."""
    for _ in range(3):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def matmul_throughput(device: torch.device) -> dict[str, float]:
    """GFLOP/s of torch.mm on a large square product and on this model's own shapes, and of
    F.linear on the IWAE decoder's product."""

    def rate(product, m, k, n, reps):
        """GFLOP/s of `product()`, an m×k by k×n matrix product."""
        return 2 * m * k * n / seconds_per_call(product, reps, device) / 1e9

    def gflops(m, k, n, reps):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        return rate(lambda: a @ b, m, k, n, reps)

    def linear_gflops(m, k, n, reps):
        x, w, b = (torch.randn(m, k, device=device), torch.randn(n, k, device=device),
                   torch.randn(n, device=device))
        with torch.inference_mode():
            return rate(lambda: F.linear(x, w, b), m, k, n, reps)

    return {"square_2048": gflops(2048, 2048, 2048, 10),
            "model_shapes_128x784x400": gflops(128, 784, 400, 400),
            "iwae_linear_2600x400x784": linear_gflops(2600, 400, 784, 40)}


def elementwise_ns(device: torch.device) -> dict[str, float]:
    """Nanoseconds per element of the elementwise ops a Bernoulli decoder's log-likelihood is
    made of, on one IWAE chunk's logits (2600x784) with this process's threads: torch's own
    kernels, whose speed differs by CPU and by the instruction set torch picks for it
    (`torch.backends.cpu.get_cpu_capability()`, set by ATEN_CPU_CAPABILITY)."""
    x = torch.randn(2600, 784, device=device)
    y = (torch.rand_like(x) < 0.5).float()
    ops = {"exp": lambda: torch.exp(x), "log": lambda: torch.log(x.abs()),
           "log1p": lambda: torch.log1p(x.abs()), "softplus": lambda: F.softplus(x),
           "bce_with_logits": lambda: F.binary_cross_entropy_with_logits(x, y,
                                                                        reduction="none")}
    with torch.inference_mode():
        return {name: seconds_per_call(op, 20, device) / x.numel() * 1e9
                for name, op in ops.items()}


def bench_sweep(out: Path, device: str, epochs: int, n_jobs: int,
                compiles: tuple[str, ...] = ("auto",)) -> dict[str, float]:
    """A 4-point σ sweep as whole `vaerun train -m` commands: its jobs one at a time (Hydra's
    basic launcher), and `n_jobs` at once on the same device (joblib); wall seconds each, for
    each `trainer.compile` setting in `compiles` (a name's suffix where not `auto`)."""
    args = ["-m", "likelihood=gaussian", "likelihood.sigma=0.05,0.1,0.3,1",
            f"trainer.epochs={epochs}", f"trainer.device={device}", "eval.iwae_k=100"]
    result = {}
    for compile_ in compiles:
        for name, extra in (("one_at_a_time", []),
                            (f"joblib_{n_jobs}_at_once", ["hydra/launcher=joblib",
                                                          f"hydra.launcher.n_jobs={n_jobs}"])):
            name += "" if compile_ == "auto" else f"_compile_{compile_}"
            t0 = time.perf_counter()
            vaerun("train", *args, *extra, f"trainer.compile={compile_}",
                   f"hydra.sweep.dir={out / ('sweep_' + name)}")
            result[name] = time.perf_counter() - t0
            print(f"  sweep {name}: {result[name]:.1f} s", file=sys.stderr, flush=True)
    return result


def model_flops_per_epoch(n: int) -> float:
    """Matmul FLOPs of one epoch: forward 2·(weights) per image, backward twice that."""
    weights = D * H + H * 2 * L + L * H + H * D
    return 3 * 2 * weights * n


def main() -> int:
    p = argparse.ArgumentParser(description="vaerun training speed benchmark")
    p.add_argument("--epochs", type=int, default=5,
                   help="measured rounds (one epoch of each loop each; +1 warm-up round); on a "
                        "shared machine, where one loop's epoch can vary by 1.5x within a run, "
                        "the median of 5 moves less than that of 3")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-process", action="store_true",
                   help="leave out the whole-process runs (vaerun train trainer.epochs=5, start-up)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--sweep-jobs", type=int, default=0,
                   help="also time a 4-point sigma sweep (2 epochs) one job at a time and with "
                        "joblib running this many jobs at once on the device")
    p.add_argument("--startup", action="store_true",
                   help="only time the start-up process against importing torch and building an "
                        "optimizer (the front hall's target: at most 1.5x), --epochs rounds")
    p.add_argument("--bare-process", action="store_true",
                   help="only run the bare loop's 5 epochs on --device and exit (as row d)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    if a.bare_process:
        from vaerun.data import MNIST

        epoch = bench_bare(MNIST(MNIST.Config(), device).train, a.batch_size, False)
        for _ in range(5):
            epoch()
        return 0

    if a.startup:
        return startup(a)
    from vaerun.data import MNIST
    from vaerun.runtime import map_torch_constants

    # torch's constant pages as torch leaves them, then mapped as vaerun maps them: every loop of
    # this process runs mapped (they compare code); a bare process (d_) stays as torch leaves it
    ew_unmapped, mapped_mb, ew_mapped = {}, 0.0, {}
    if a.device == "cpu":
        ew_unmapped = elementwise_ns(device)
        mapped_mb = map_torch_constants() / 1e6
        ew_mapped = elementwise_ns(device)

    tmp = Path(tempfile.mkdtemp(prefix="vaerun-bench-"))
    try:
        raw = tmp / "MNIST" / "raw"
        raw.mkdir(parents=True)
        bundled = Path(str(resources.files("vaerun.bundled") / "mnist"))
        for f in bundled.glob("*-ubyte.gz"):
            with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        x = MNIST(MNIST.Config(), device).train
        n = len(x)
        rows = {}

        def record(name, times, **extra):
            med = statistics.median(times)
            rows[name] = {"seconds_per_epoch": med, "images_per_second": n / med,
                          "epoch_times": times, "min": min(times), "max": max(times),
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          **extra}

        def measure(loops: dict) -> None:
            """Round-robin: one epoch of each loop per round, so a machine that drifts slower
            or faster affects every loop alike. The first round is the warm-up."""
            times: dict[str, list[float]] = {k: [] for k in loops}
            for r in range(a.epochs + 1):
                for name, epoch in loops.items():
                    t = epoch()
                    if r:
                        times[name].append(t)
                print(f"  round {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()
                                                  if v), file=sys.stderr, flush=True)
            for name, epoch in loops.items():
                evals = getattr(epoch, "eval_seconds", None)
                extra = {"test_eval_seconds": statistics.median(evals[1:])} if evals else {}
                runs = getattr(epoch, "metrics", None)
                if runs and "test/iwae_seconds" in runs[-1]:
                    extra["iwae_seconds"] = [m["test/iwae_seconds"] for m in runs[1:]]
                    extra["train_seconds"] = [m["train_seconds"] for m in runs[1:]]
                    extra["quality_seconds"] = [m.get("test/quality_seconds", 0.0)
                                                for m in runs[1:]]
                record(name, times[name], **extra)

        loops = {"a_vaerun": bench_vaerun(tmp, a.batch_size, a.device, a.threads, False),
                 "a_vaerun_no_train_logging": bench_vaerun(tmp, a.batch_size, a.device,
                                                           a.threads, False, 10**9)}
        if not a.skip_reference:
            loops["b_reference"] = bench_reference(tmp, a.batch_size, device)
        loops["c_bare"] = bench_bare(x, a.batch_size, False)
        loops["c_bare_fused_adam"] = bench_bare(x, a.batch_size, False, fused=True)
        if a.device == "cpu":
            loops["c_bare_fused_adam_flush_denormal"] = bench_bare_child(a.batch_size, a.threads)
        if not a.skip_process:  # whole processes, in the same rounds
            loops["d_process_default_5_epochs"] = bench_process(
                tmp, "default", ["trainer.epochs=5"], a.threads, a.device)
            loops["d_process_startup"] = bench_process(
                tmp, "startup", ["trainer.epochs=0", "eval.iwae_k=0", "eval.quality_images=0"],
                a.threads, a.device)
            loops["d_process_torch_import"] = bench_torch_import()
            loops["d_process_bare_5_epochs"] = bench_bare_process(a.batch_size, a.threads,
                                                                  a.device)
            if a.compile:  # the default run with the step captured and eager, whatever auto does
                for c in ("true", "false"):
                    loops[f"d_process_default_5_epochs_compile_{c}"] = bench_process(
                        tmp, f"default_compile_{c}", ["trainer.epochs=5", f"trainer.compile={c}"],
                        a.threads, a.device)
        measure(loops)
        for epoch in loops.values():
            getattr(epoch, "close", lambda: None)()
        if a.compile:  # last: inductor's compile workers keep using the CPU afterwards
            measure({"a_vaerun_compiled": bench_vaerun(tmp, a.batch_size, a.device, a.threads,
                                                       True),
                     "c_bare_compiled": bench_bare(x, a.batch_size, True)})
        mm = matmul_throughput(device)
        ew = elementwise_ns(device)
        sweep = bench_sweep(tmp, a.device, 2, a.sweep_jobs, ("true", "false") if a.compile
                            else ("auto",)) if a.sweep_jobs else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    flops = model_flops_per_epoch(n)
    floor = flops / (mm["square_2048"] * 1e9)
    logging_cost = (rows["a_vaerun"]["seconds_per_epoch"]
                    / rows["a_vaerun_no_train_logging"]["seconds_per_epoch"] - 1)
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device),
                    "processor": platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "batch_size": a.batch_size, "images": n, "loops": rows,
        "model_gflop_per_epoch": flops / 1e9, "matmul_gflops": mm,
        "matmul_floor_seconds_per_epoch": floor,
        "elementwise_ns_per_element": ew,
        "elementwise_ns_per_element_unmapped": ew_unmapped, "torch_constants_mapped_mb": mapped_mb,
        "elementwise_ns_per_element_mapped_at_once": ew_mapped,
        # the end-of-run IWAE (k = 100 on 10,000 test images): 1e6 decoder passes, whose
        # matrix products alone take this long at F.linear's measured rate on its shape
        "iwae_matmul_floor_seconds": 1e6 * 2 * (L * H + H * D)
        / (mm["iwae_linear_2600x400x784"] * 1e9),
        "ratios": {"a_over_c": rows["a_vaerun"]["seconds_per_epoch"]
                   / rows["c_bare"]["seconds_per_epoch"],
                   "a_over_c_fused_adam": rows["a_vaerun"]["seconds_per_epoch"]
                   / rows["c_bare_fused_adam"]["seconds_per_epoch"]},
        "logging_cost": logging_cost,
    }
    if "d_process_default_5_epochs" in rows:
        five_bare = 5 * rows["c_bare"]["seconds_per_epoch"]
        d, st = rows["d_process_default_5_epochs"], rows["d_process_startup"]
        iwae = statistics.median(d["iwae_seconds"])
        scoring = statistics.median(d["quality_seconds"])
        epoch = statistics.median(t / 5 for t in d["train_seconds"])
        result["whole_process"] = {
            "default_5_epochs_seconds": [d["min"], d["seconds_per_epoch"], d["max"]],
            "startup_seconds": [st["min"], st["seconds_per_epoch"], st["max"]],
            "bare_loop_5_epochs_seconds": five_bare,
            "iwae_seconds": iwae, "quality_seconds": scoring,
            "epoch_seconds_in_that_run": epoch}
        if "d_process_bare_5_epochs" in rows:
            result["ratios"]["default_5_epochs_over_bare_process"] = (
                d["seconds_per_epoch"] / rows["d_process_bare_5_epochs"]["seconds_per_epoch"])
        if "d_process_torch_import" in rows:
            result["whole_process"]["torch_import_seconds"] = (
                rows["d_process_torch_import"]["seconds_per_epoch"])
            result["ratios"]["torch_import_over_bare_5_epochs"] = (
                rows["d_process_torch_import"]["seconds_per_epoch"] / five_bare)
        result["ratios"].update(
            default_5_epochs_over_bare_5_epochs=d["seconds_per_epoch"] / five_bare,
            startup_over_bare_5_epochs=st["seconds_per_epoch"] / five_bare,
            iwae_in_epochs=iwae / epoch, quality_over_bare_5_epochs=scoring / five_bare)
    if sweep:
        result["sweep_4_sigmas_2_epochs_seconds"] = sweep
    if "a_vaerun_compiled" in rows:  # the captured step: its epoch against the bare loop's
        result["ratios"].update(
            a_compiled_over_c=rows["a_vaerun_compiled"]["seconds_per_epoch"]
            / rows["c_bare"]["seconds_per_epoch"],
            a_compiled_over_a=rows["a_vaerun_compiled"]["seconds_per_epoch"]
            / rows["a_vaerun"]["seconds_per_epoch"])
    if "d_process_default_5_epochs_compile_true" in rows:
        t, f = (rows[f"d_process_default_5_epochs_compile_{c}"]["seconds_per_epoch"]
                for c in ("true", "false"))
        result["ratios"]["default_5_epochs_compile_true_over_false"] = t / f
        if "d_process_bare_5_epochs" in rows:
            result["ratios"]["default_5_epochs_compile_true_over_bare_process"] = (
                t / rows["d_process_bare_5_epochs"]["seconds_per_epoch"])
    if "c_bare_fused_adam_flush_denormal" in rows:
        result["ratios"]["a_over_c_fused_adam_flush_denormal"] = (
            rows["a_vaerun"]["seconds_per_epoch"]
            / rows["c_bare_fused_adam_flush_denormal"]["seconds_per_epoch"])
    if "b_reference" in rows:
        result["ratios"]["a_over_b"] = (rows["a_vaerun"]["seconds_per_epoch"]
                                        / rows["b_reference"]["seconds_per_epoch"])
    for r in rows.values():
        r["fraction_of_matmul_peak"] = floor / r["seconds_per_epoch"]

    print(f"\nvaerun bench: {n} images/epoch, batch {a.batch_size}, {torch.get_num_threads()} "
          f"threads, {device}, torch {torch.__version__}")
    print(f"{'loop (d_: whole process, s)':34} {'s/epoch':>8} {'min':>7} {'max':>7} "
          f"{'images/s':>9} {'of peak':>8} {'test eval s':>11}")
    for name, r in rows.items():
        ev = f"{r['test_eval_seconds']:.3f}" if "test_eval_seconds" in r else "-"
        print(f"{name:34} {r['seconds_per_epoch']:8.3f} {r['min']:7.3f} {r['max']:7.3f} "
              f"{r['images_per_second']:9.0f} {r['fraction_of_matmul_peak']:8.1%} {ev:>11}")
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in result["ratios"].items())
          + f"; logging costs {logging_cost:+.1%}")
    print(f"model: {flops / 1e9:.1f} GFLOP/epoch; torch.mm: {mm['square_2048']:.1f} GFLOP/s "
          f"(2048² square), {mm['model_shapes_128x784x400']:.1f} GFLOP/s (128x784x400); "
          f"matmul floor {floor:.3f} s/epoch")
    print(f"IWAE decoder product (2600x400x784) by F.linear: "
          f"{mm['iwae_linear_2600x400x784']:.1f} GFLOP/s")
    print(f"IWAE (k = 100, 10,000 images): matmul floor {result['iwae_matmul_floor_seconds']:.2f}"
          f" s; elementwise ns/element ({torch.backends.cpu.get_cpu_capability()}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ew.items()))
    if ew_unmapped:
        print(f"  at the start, before and after vaerun.runtime.map_torch_constants() mapped "
              f"{mapped_mb:.0f} MB of torch's constants: " + ", ".join(
                  f"{k} {v:.2f} -> {ew_mapped[k]:.2f}" for k, v in ew_unmapped.items()))
    if "whole_process" in result:
        w = result["whole_process"]
        print(f"whole default process {w['default_5_epochs_seconds'][1]:.2f} s: 5 epochs "
              f"{5 * w['epoch_seconds_in_that_run']:.2f} s, IWAE {w['iwae_seconds']:.2f} s, "
              f"sample quality {w['quality_seconds']:.2f} s; start-up alone "
              f"{w['startup_seconds'][1]:.2f} s, of which importing torch and building an "
              f"optimizer {w.get('torch_import_seconds', float('nan')):.2f} s")
    if sweep:
        print("4-point sigma sweep, 2 epochs: " + ", ".join(f"{k} {v:.1f} s"
                                                          for k, v in sweep.items()))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
