"""One training step, one shape: forward, backward, the optimizer's update and the sums of the
step's per-image terms, for a batch of `trainer.batch_size` rows of the epoch's images.

An epoch of N images in batches of B is ceil(N/B) steps over the epoch's order padded to a
whole number of batches; a `mask` marks the padding of the last batch (0), which no loss, sum
or batch statistic counts: every image is seen once an epoch and every loss is as written (a
mean over a batch is over its images), while every step has the same shape.

`trainer.compile` captures the whole step as one graph (`torch.compile(fullgraph=True)`; on
CUDA with `mode="reduce-overhead"`, a CUDA graph replayed each step). The step is then written
functionally, as a captured graph can hold it: gradients by `torch.func.grad` of the loss of
the model called with its parameters, and the optimizer's own update function
(`torch.optim.adam.adam`, for Adam and AdamW) on the optimizer's own state, so a checkpoint is
the same either way and a run may resume eager or compiled. Eager, the step is the usual
`loss.backward()` and `optimizer.step()` (fused Adam).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch
from torch import Tensor, nn

from vaerun.data import to_float
from vaerun.elbo import Objective, elbo_terms
from vaerun.logs import phase
from vaerun.model import VAE

log = logging.getLogger("vaerun")


class Loss(nn.Module):
    """The step's loss and the sums of its terms over the batch's images, as a module, so that
    `torch.func.functional_call` can call it with the parameters it differentiates."""

    def __init__(self, vae: VAE, objective: Objective):
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, tuple]:
        x, n = to_float(x), mask.sum()  # uint8 images (dataset=images): floats a batch at a time
        terms = elbo_terms(self.vae, x, self.objective, bce=False, batch=n, mask=mask)
        sums = (torch.stack([v.detach() for v in terms.values()], 1) * mask[:, None]).sum(0)
        return (terms["loss"] * mask).sum() / n, (sums, n)


class TrainStep:
    """`step(x_all, idx, mask)`: one step on the rows `idx` of `x_all` (`mask`: which are
    images); returns the names of the terms, their sums over the images, and the images."""

    backend = "inductor"  # torch.compile's (tests use aot_eager: the same graph, no codegen)
    progress_seconds: float | None = None  # lines while it compiles (trainer.progress_seconds)
    compile_seconds: float | None = None  # the capture's time, until the loop has logged it

    def __init__(self, vae: VAE, opt: torch.optim.Optimizer, objective: Objective,
                 compile_mode: str | None):
        self.vae, self.opt, self.loss = vae, opt, Loss(vae, objective)
        self.compiled, lik = None, vae.likelihood
        self.settings = contextlib.ExitStack()  # the compiler's, for the run: `close()` after
        with torch.no_grad():  # the names of the sums, in elbo_terms' order
            dev = vae.prior_loc.device
            out = torch.zeros(1, lik.params_per_pixel * lik.dim, device=dev)
            self.keys = ("loss", "elbo", "log_px_z", "kl", "mse",
                         *lik.terms(out, torch.zeros(1, lik.dim, device=dev)))
        if compile_mode is not None:
            why = self.why_not_compiled()
            if why:
                log.warning("trainer.compile: %s; training eager", why)
            else:
                torch._dynamo.reset()  # this run's step: a sweep's jobs in one process each
                self.settings.enter_context(torch._dynamo.config.patch(
                    trace_autograd_ops=True))  # backward() in the graph
                self.settings.enter_context(torch._inductor.config.patch(
                    fallback_random=True))  # eager's random numbers
                self.compiled = torch.compile(self.functional, fullgraph=True, backend=self.backend,
                                              mode=compile_mode or None)
                self.lrs = [torch.tensor(float(g["lr"]), device=g["params"][0].device)
                            for g in opt.param_groups]

    def close(self) -> None:
        """Hand torch's compiler settings back as the run found them."""
        self.settings.close()

    def why_not_compiled(self) -> str:
        groups = self.opt.param_groups
        if type(self.opt) not in (torch.optim.Adam, torch.optim.AdamW):
            return f"the captured step has Adam's and AdamW's update, not {type(self.opt).__name__}'s"
        if any(g["amsgrad"] or g["differentiable"] for g in groups):
            return "the captured step has no amsgrad"
        return ""

    def __call__(self, x_all: Tensor, idx: Tensor, mask: Tensor) -> tuple:
        if self.compiled is None:
            return self.keys, *self.eager(x_all[idx], mask)
        if not hasattr(self, "buffers"):
            return self.keys, *self.first(x_all, idx, mask)
        self.buffers[0].copy_(idx)
        self.buffers[1].copy_(mask)
        return self.keys, *self.compiled(x_all, *self.buffers, self.lrs)

    def eager(self, x: Tensor, mask: Tensor) -> tuple:
        loss, out = self.loss(x, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return out

    def first(self, x_all: Tensor, idx: Tensor, mask: Tensor) -> tuple:
        """The first captured step: the optimizer's state made as torch.optim makes it, the
        graph compiled (its time logged), or, if that fails, eager from now on (one line)."""
        for g in self.opt.param_groups:
            for p in g["params"]:
                if not self.opt.state[p]:
                    self.opt.state[p].update(
                        step=torch.zeros((), dtype=torch.float32, device=p.device),
                        exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        self.buffers = (idx.clone(), mask.clone())
        want, undo = self.reference(x_all, idx, mask)
        started = time.perf_counter()
        cpp = logging.getLogger("torch.utils.cpp_extension")  # on import, inductor's C++ build
        level = cpp.level  # warns "No CUDA runtime is found" on every CPU machine: not news here
        cpp.setLevel(logging.ERROR)
        try:
            with phase("trainer.compile: capturing the training step as one graph",
                       self.progress_seconds):
                out = self.compiled(x_all, *self.buffers, self.lrs)
        except Exception as e:  # noqa: BLE001 (a compiler's failure of any kind)
            log.warning("trainer.compile: the step could not be captured (%s: %s); training "
                        "eager", type(e).__name__, (str(e).strip().splitlines() or [""])[0][:200])
            self.compiled = None
            return self.eager(x_all[idx], mask)
        finally:
            cpp.setLevel(level)
        self.compile_seconds = time.perf_counter() - started
        log.info("trainer.compile: captured the training step in %.1f s", self.compile_seconds)
        got = out[0]  # wrong: a NaN where eager has none, or a loss 5% off eager's
        if (want.isfinite().all() and not got.isfinite().all()) or not torch.allclose(
                got[0], want[0], rtol=0.05):
            log.warning("trainer.compile: the captured step's first loss (%.6g) is not eager's "
                        "(%.6g) on the same batch: the compiled code is wrong here; training "
                        "eager", float(got[0]), float(want[0]))
            undo()
            self.compiled = None
            return self.eager(x_all[idx], mask)
        return out

    def reference(self, x_all: Tensor, idx: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        """Eager's sums on the first batch, to check the compiled step's against (a compiler's
        wrong code: torch 2.14.1's AVX2 code for experiment=iwae_table1 gave NaN at step 1),
        and a function that puts the model, the optimizer and the random streams back."""
        cuda = x_all.device.type == "cuda"
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(x_all.device) if cuda else None
        model = {k: v.clone() for k, v in self.loss.state_dict().items()}
        opt = [{k: v.clone() for k, v in self.opt.state[p].items()}
               for g in self.opt.param_groups for p in g["params"]]

        def undo() -> None:
            self.loss.load_state_dict(model)
            for state, saved in zip((self.opt.state[p] for g in self.opt.param_groups
                                     for p in g["params"]), opt, strict=True):
                for k, v in saved.items():
                    state[k].copy_(v)
            torch.set_rng_state(rng[0])
            if cuda:
                torch.cuda.set_rng_state(rng[1], x_all.device)

        with torch.no_grad():
            want = self.loss(x_all[idx], mask)[1][0]
        undo()
        return want, undo

    def set_lr(self) -> None:
        """The schedule's learning rates, into the captured step's (after it moves them)."""
        for lr, g in zip(getattr(self, "lrs", ()), self.opt.param_groups, strict=False):
            lr.fill_(float(g["lr"]))

    def functional(self, x_all: Tensor, idx: Tensor, mask: Tensor, lrs: list[Tensor]) -> tuple:
        from torch.func import functional_call, grad
        from torch.optim.adam import adam

        params, buffers = dict(self.loss.named_parameters()), dict(self.loss.named_buffers())
        names = {id(p): k for k, p in params.items()}  # buffers an input too: a step updates some
        grads, out = grad(lambda p, b: functional_call(self.loss, (p, b), (x_all[idx], mask)),
                          has_aux=True)(params, buffers)
        with torch.no_grad():
            for g, lr in zip(self.opt.param_groups, lrs, strict=True):
                st = [self.opt.state[p] for p in g["params"]]
                adam(g["params"], [grads[names[id(p)]] for p in g["params"]],
                     [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
                     [s["step"] for s in st], foreach=False, capturable=True,
                     decoupled_weight_decay=g.get("decoupled_weight_decay", False),
                     amsgrad=False, beta1=g["betas"][0], beta2=g["betas"][1], lr=lr,
                     weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])
        return out


CPU_STEPS_TO_PAY = 25_000  # measured: a first compile costs 15-19 s, a step then 0.65-1.5 ms less


def compile_mode(setting: Any, device: torch.device, steps: int) -> str | None:
    """`trainer.compile` for `steps` steps on `device`: None (eager), or torch.compile's mode
    ("" its default). `auto` captures on CUDA, where a step is many small kernels each launched
    by Python, and on the CPU where the run is long enough to pay for the compile: from
    CPU_STEPS_TO_PAY steps on (scripts/bench.py, docs/performance.md)."""
    setting = str(setting).lower()
    if setting == "false" or (setting == "auto" and device.type != "cuda"
                              and steps < CPU_STEPS_TO_PAY):
        return None
    return "reduce-overhead" if device.type == "cuda" else ""
