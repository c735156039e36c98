"""What a command sets process-wide in torch for a run, handed back as it found it afterwards.

- The device: `trainer.device` (auto: CUDA where present), refused where absent.
- torch's CPU threads: `trainer.threads` (else SLURM_CPUS_PER_TASK, else torch's default).
- Subnormal floats (below 1.2e-38) flushed to zero in every CPU thread, on the CPU only: Adam's
  first moment of a weight whose gradient stays 0 shrinks by β1 a step into subnormals, on which
  a CPU multiply is many times slower. It is set before torch starts its thread pool, whose
  threads inherit it; torch has no getter for it, so it stays set.
- torch's constant tables mapped (`map_torch_constants`), on the CPU only: its AVX-512 kernels
  read constants with masked loads, and on AMD Zen 4 a masked load of a page never mapped yet
  takes a slow path every time, which made torch.log1p ~10x slower.
- torch's backends as a fresh process has them (`BACKENDS`, torch's defaults): a notebook's
  `torch.set_float32_matmul_precision("medium")` runs matrix products in bfloat16 on a CPU with
  AVX-512 BF16 and in TF32 on a GPU, `torch.backends.mkldnn.enabled = False` changes the CPU's
  transposed convolutions, `cudnn.benchmark = True` the GPU's choice of algorithm: each would
  change the run's numbers.
- `trainer.deterministic`: torch.use_deterministic_algorithms, with the cuBLAS workspace setting
  it needs made before the run's first CUDA work; false turns off a caller's (a notebook's),
  which on a GPU without that setting fails the first matrix product.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import operator
import os
from collections.abc import Iterator
from typing import Any

import torch

from vaerun import slurm
from vaerun.errors import ConfigError

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
BACKENDS = {"mkldnn.enabled": True, "cudnn.enabled": True, "cudnn.benchmark": False,
            "cudnn.deterministic": False, "mkldnn.matmul.fp32_precision": "ieee",  # float32,
            "mkldnn.conv.fp32_precision": "ieee", "mkldnn.rnn.fp32_precision": "ieee",
            "cuda.matmul.fp32_precision": "ieee", "cudnn.conv.fp32_precision": "tf32",
            "cudnn.rnn.fp32_precision": "tf32"}  # but TF32 in cuDNN: torch's defaults


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "CUDA is not available here; use "
                          "trainer.device=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= (n := torch.cuda.device_count()):
        raise ConfigError("trainer.device", name, f"this machine has {n} CUDA device(s), "
                          f"cuda:0 to cuda:{n - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here; use cpu or auto")
    return torch.device(name)


def threads(value: int | None) -> int | None:
    """torch's CPU threads for a run: trainer.threads, else SLURM_CPUS_PER_TASK (checked like a
    key), else None (torch's default)."""
    return value or slurm.cpus_per_task()


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: CUDA's free memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@functools.cache
def map_torch_constants() -> int:
    """Read one byte of every page of libtorch_cpu's read-only data (64 MB, ~5 ms, once per
    process), so that each is mapped; the bytes mapped (0 where there is no /proc: not Linux).

    torch's AVX-512 kernels load constants with masked loads. A lane masked off is not read, so
    a page whose constants no lane ever reads is never mapped; on this project's AMD EPYC (Zen
    4) every masked load that touches a page not mapped takes a slow path, and that made
    torch.log1p 9-10x slower (4M floats: 34 ms, 3.3 ms once mapped) and a Bernoulli decoder's
    IWAE bound 1.6-1.8x slower (docs/performance.md). Other CPUs: not measured."""
    page, done = os.sysconf("SC_PAGE_SIZE"), 0
    with contextlib.suppress(OSError, ValueError), open("/proc/self/maps") as f:
        for w in (line.split(maxsplit=5) for line in f):  # the library wherever torch loaded it
            if len(w) == 6 and w[1] == "r--p" and w[5].rstrip("\n").endswith("/libtorch_cpu.so"):
                lo, hi = (int(v, 16) for v in w[0].split("-"))
                memoryview((ctypes.c_char * (hi - lo)).from_address(lo)).cast("B")[::page].tobytes()
                done += hi - lo
    return done


def backends(values: dict[str, Any]) -> dict[str, Any]:
    """Set torch.backends' settings (`mkldnn.matmul.fp32_precision`: a key under torch.backends);
    those they replace."""
    old = {}
    for key, value in values.items():
        parent, _, name = key.rpartition(".")
        node = operator.attrgetter(parent)(torch.backends)
        old[key] = getattr(node, name)
        setattr(node, name, value)
    return old


@contextlib.contextmanager
def applied(device: torch.device, count: int | None, deterministic: bool = False
            ) -> Iterator[None]:
    """The settings of the module docstring for the block, with torch's own defaults for
    dtype and device (a notebook may have chosen float64, or cuda), with gradients, without
    autocast and anomaly mode; threads, determinism, the environment, those defaults, torch's
    backends and random streams (a run seeds them) are as they were afterwards."""
    with contextlib.ExitStack() as undo:  # each setting made beside its handing back
        undo.callback(torch.set_rng_state, torch.get_rng_state())
        if device.type == "cuda":
            undo.callback(torch.cuda.set_rng_state, torch.cuda.get_rng_state(device), device)
        undo.callback(backends, backends(BACKENDS))
        if device.type == "cpu":
            torch.set_flush_denormal(True)
            map_torch_constants()
        if count := threads(count):
            undo.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(count)
        if deterministic and CUBLAS not in os.environ:
            undo.callback(os.environ.pop, CUBLAS, None)
            os.environ[CUBLAS] = ":4096:8"
        # as trainer.deterministic says, not as a caller left it (the call imports
        # torch._inductor: made only where it changes anything)
        old = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())
        if old != (deterministic, False) and (deterministic or old[0]):
            undo.callback(torch.use_deterministic_algorithms, old[0], warn_only=old[1])
            torch.use_deterministic_algorithms(deterministic)
        undo.callback(torch.set_default_dtype, torch.get_default_dtype())
        torch.set_default_dtype(torch.float32)  # a run's weights match its float32 images
        if (old_device := torch.get_default_device()).type != "cpu":  # a run puts its tensors
            undo.callback(torch.set_default_device, old_device)  # on `device` itself
            torch.set_default_device(None)
        # a caller's no_grad, autocast (bfloat16) or anomaly mode (no step captured): not a run's
        for mode in (torch.inference_mode(False), torch.enable_grad(),
                     torch.autograd.set_detect_anomaly(False),
                     *(torch.autocast(kind, enabled=False)
                       for kind in dict.fromkeys(("cpu", device.type)))):
            undo.enter_context(mode)
        yield
