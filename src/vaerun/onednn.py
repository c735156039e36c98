"""torch's linear layers through oneDNN where no gradient is asked for (every evaluation).

For float32 on the CPU, `F.linear` calls MKL's sgemm. torch also ships oneDNN, which runs its
CPU convolutions and the linear layers of `torch.compile`. On this project's CPU (AMD EPYC,
AVX-512) its float32 product ran the IWAE decoder's [2600, 400] × [400, 784] at 172 GFLOP/s
against MKL's 113 while the shared machine ran slow, and level with it (179 against 185) while
it ran fast (scripts/bench.py prints both). Both are IEEE float32 products that sum in
different orders: the outputs differ by float rounding, and each is deterministic.

Training keeps torch's own path and its gradients: the mode only reroutes calls made without
one.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@functools.cache
def available() -> bool:
    """oneDNN's linear op is in this torch build, on an x86-64 CPU (elsewhere MKL is not what
    F.linear calls)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (a build without it raises here)
    except (AttributeError, RuntimeError):
        return False
    return torch.backends.mkldnn.is_available()


class _OneDNNLinear(TorchFunctionMode):
    """F.linear(x, W, b) = x Wᵀ + b by oneDNN, for float32 CPU tensors without a gradient."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():
            given = {**dict(zip(("input", "weight", "bias"), args, strict=False)), **kwargs}
            x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
            if x is not None and weight is not None and all(
                    t is None or (t.device.type == "cpu" and t.dtype == torch.float32
                                  and t.layout == torch.strided) for t in (x, weight, bias)):
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)


@contextmanager
def linear_layers() -> Iterator[None]:
    """Within the block, F.linear (every nn.Linear) without a gradient runs on oneDNN where
    `available()`; anything else runs as it would."""
    if not available():
        yield
        return
    with _OneDNNLinear():
        yield
