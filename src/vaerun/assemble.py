"""A run assembled from its typed config: device, data, model with its likelihood, optimizer, and
the start-or-resume decision. `vaerun train`, `vaerun eval` and `vaerun report` all build runs
here; it imports the part modules, so their registries are filled before `typed` looks them up.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaerun import checkpoint, config, slurm
from vaerun.config import RunConfig, require
from vaerun.data import Dataset
from vaerun.errors import ConfigError, Refused, UserError
from vaerun.likelihoods import Likelihood
from vaerun.model import VAE
from vaerun.objective import Meter

log = logging.getLogger("vaerun")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "CUDA is not available here; use "
                          "trainer.device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here; use cpu or auto")
    return torch.device(name)


def optimizer_class(spec: dict) -> type[torch.optim.Optimizer]:
    """The torch.optim class that `optimizer._target_` names; nothing else may be named."""
    target = spec.get("_target_")
    name = target.rsplit(".", 1)[-1] if isinstance(target, str) else ""
    cls = getattr(torch.optim, name, None)
    ok = (isinstance(target, str) and target in (f"torch.optim.{name}", name)
          and isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer))
    require(ok, "optimizer._target_", target,
            "must name a torch.optim optimizer, e.g. torch.optim.Adam (optimizer=adam)")
    return cls


def optimizer_kwargs(spec: dict) -> dict[str, Any]:
    """`spec` less `_target_`, each key checked against the optimizer's own signature."""
    cls = optimizer_class(spec)
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    for k, v in kwargs.items():
        require(k in params and k != "params", f"optimizer.{k}", v,
                f"not a parameter of {cls.__name__}; it takes "
                f"{', '.join(p for p in params if p not in ('params', 'self'))}")
        require(v is None or isinstance(v, (int, float, str, list, tuple)), f"optimizer.{k}", v,
                "must be a number, a string or a list of numbers")
    try:  # torch checks its values (momentum >= 0, betas in [0, 1), ...) when it is built
        cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0]
        key = next((k for k in kwargs if k in msg), None)  # torch names the value it refuses
        raise ConfigError(f"optimizer.{key}" if key else "optimizer",
                          kwargs[key] if key else kwargs, msg) from None
    return kwargs


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: RunConfig, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and Adam's two moments (16 bytes a parameter)
    exceed the device's memory, counting its parameters on the meta device (no allocation)."""
    shape = Dataset.lookup(cfg.dataset.name).shape
    if shape is None:
        return
    with torch.device("meta"):
        lik = Likelihood.lookup(cfg.likelihood.name)(cfg.likelihood, math.prod(shape),
                                                     cfg.model.link.value)
        n = sum(p.numel() for p in VAE(cfg.model, lik, shape).parameters())
    need, have = 16 * n, memory_bytes(device)
    if need > have:
        sizes = {k: v for k, v in cfg.model.__dict__.items() if isinstance(v, int)}
        key = max(sizes, key=sizes.get)
        raise ConfigError(f"model.{key}", sizes[key], f"the model would have {n:.3g} "
                          f"parameters, about {need / 1e9:.3g} GB with their gradients and "
                          f"optimizer state, and this {device.type} has {have / 1e9:.3g} GB")


def typed(cfg: DictConfig, training: bool = True, read_ahead: bool = False) -> RunConfig:
    """The typed, fully checked config of a run: devices, memory and (`training`) optimizer
    included. Checking the optimizer builds one, and torch then imports torch._dynamo (1 s):
    an evaluation of a saved run, which never steps, skips it. `read_ahead`: the run's data
    files are read meanwhile, in a thread (`Dataset.read_ahead`)."""
    rc = config.typed(cfg)
    device = resolve_device(rc.trainer.device)  # CUDA asked for but absent fails here
    if read_ahead:
        Dataset.lookup(rc.dataset.name).read_ahead(rc.dataset)
    if training:
        optimizer_kwargs(rc.optimizer)
    check_memory(rc, device)
    return rc


def build(cfg: RunConfig, device: torch.device) -> tuple[Dataset, VAE]:
    """The data (in memory on `device`) and the VAE with its likelihood, untrained."""
    data = Dataset.lookup(cfg.dataset.name)(cfg.dataset, device)
    lik = Likelihood.lookup(cfg.likelihood.name)(cfg.likelihood, data.dim, cfg.model.link.value,
                                                 cfg.trainer.batch_size)
    return data, VAE(cfg.model, lik, data.image_shape).to(device)


def make_optimizer(cfg: RunConfig, vae: VAE) -> torch.optim.Optimizer:
    kwargs = optimizer_kwargs(cfg.optimizer)
    return optimizer_class(cfg.optimizer)(vae.param_groups(kwargs["lr"]), **kwargs)


def set_threads(threads: int | None) -> None:
    """torch's CPU threads: `threads` of them (None: torch's default), each flushing subnormal
    floats (below 1.2e-38) to zero. A multiply on those takes 18x as long here, and training
    makes many: Adam's first moment of a weight whose gradient has gone to zero (a pixel that
    stays 0, a dead unit) shrinks by β1 = 0.9 a step and is subnormal by MNIST's second epoch;
    epochs 3-5 then took 2.2-2.3 s against 1.76 s. Flushed, nothing above 1e-38 changes. Set
    before torch starts its thread pool (its threads inherit the setting), so before any work
    on data."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps so far
    batch: int = 0  # next batch within the current epoch
    perm: torch.Tensor | None = None  # the current epoch's data order
    seconds: float = 0.0  # training time so far, resumes included


@dataclass
class Session:
    """Everything a training run holds: what its checkpoint saves and restores."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    data: Dataset
    vae: VAE
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the data order's (and training noise's) random stream
    seed: int
    progress: Progress
    resumed: bool = False
    status: str = "running"
    meter: Meter = field(default_factory=Meter)  # train/* terms since the last logged point
    opened: float = field(default_factory=time.perf_counter)  # when this command took it up
    wall_before: float = 0.0  # wall-clock seconds of earlier commands on this run (resumes)

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds spent on this run by vaerun train, resumes summed."""
        return self.wall_before + time.perf_counter() - self.opened

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint.checkpoint_path(self.run_dir)

    def state(self, status: str) -> dict[str, Any]:
        p, cuda = self.progress, self.device.type == "cuda"
        rng = {"torch": torch.get_rng_state(), "data": self.gen.get_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}
        return {"model": self.vae.state_dict(), "optimizer": self.opt.state_dict(), "rng": rng,
                "epoch": p.epoch, "step": p.step, "batch": p.batch, "perm": p.perm,
                "seconds": p.seconds, "seed": self.seed, "status": status,
                "device": self.device.type, "meter": self.meter.state(),
                "wall_seconds": self.wall_seconds,
                "config": self.cfg.plain}

    def save(self, status: str) -> None:
        """Write the checkpoint (atomically); `status` is what it records the run as."""
        checkpoint.save(self.checkpoint_path, self.state(status))
        self.status = status

    def restore(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.gen.set_state(state["rng"]["data"].cpu())
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.seed = state["seed"]
        perm = state["perm"]
        self.progress = Progress(state["epoch"], state["step"], state["batch"],
                                 None if perm is None else perm.to(self.device), state["seconds"])
        self.resumed, self.status = True, state["status"]
        self.meter = Meter.from_state(state.get("meter"), self.device)
        self.wall_before = state.get("wall_seconds", 0.0)

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.progress.epoch >= self.cfg.trainer.epochs


def _seed(cfg: RunConfig) -> int:
    s = cfg.trainer.seed
    return s if s is not None else int.from_bytes(os.urandom(4), "little") >> 1


def _runtime(cfg: RunConfig) -> torch.device:
    """The device, with torch's threads and determinism set as the config asks."""
    t = cfg.trainer
    set_threads(t.threads or slurm.cpus_per_task())
    if t.deterministic:
        # bit-identical reruns on GPU too (CPU kernels already are, at a fixed thread count)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return resolve_device(t.device)


def _refuse_resume(cfg: RunConfig, run_dir: Path, state: dict[str, Any]) -> None:
    """Raise Refused unless the checkpoint `state` can continue as this config."""
    changed = checkpoint.config_changes(state["config"], cfg.plain)
    if changed:
        raise Refused(f"the checkpoint in {run_dir} is from another config (differs in "
                      f"{', '.join(changed)}); resume with its overrides or use another "
                      "hydra.run.dir")
    epoch, t = state["epoch"] + (1 if state["batch"] > 0 else 0), cfg.trainer
    if state["status"] != "finished" and epoch > t.epochs:
        raise Refused(f"the checkpoint in {run_dir} has begun epoch {epoch} (step "
                      f"{state['step']}), past trainer.epochs={t.epochs}; resume with "
                      f"trainer.epochs={epoch} or more")
    saved = checkpoint.device_type(state)
    if saved != resolve_device(t.device).type:
        raise Refused(f"the checkpoint in {run_dir} holds random streams of a {saved} device; "
                      f"resume it with trainer.device={saved} (or start a new run)")


def start(cfg: RunConfig, run_dir: Path) -> Session:
    """A new run in `run_dir`, or the run its checkpoint holds when `trainer.resume` allows.
    Refuses (Refused, before building anything) a directory that holds a run without
    trainer.resume=true, a checkpoint of another config or device, or one past the epochs."""
    run_dir = Path(run_dir)
    path = checkpoint.checkpoint_path(run_dir)
    state = None
    if path.exists():
        if (restarted := slurm.restarts()) and not cfg.trainer.resume:
            log.info("SLURM restarted this job (restart %d): resuming %s from its checkpoint",
                     restarted, run_dir)
        elif not cfg.trainer.resume:
            raise Refused(f"{run_dir} already holds a run; add trainer.resume=true to continue "
                          "it, or choose another hydra.run.dir")
        state = checkpoint.load(path)
        _refuse_resume(cfg, run_dir, state)
    device = _runtime(cfg)
    seed = state["seed"] if state else _seed(cfg)
    torch.manual_seed(seed)
    data, vae = build(cfg, device)
    session = Session(cfg, run_dir, device, data, vae, make_optimizer(cfg, vae),
                      data.generator(seed), seed, Progress())
    if state is not None:
        checkpoint.restore(path, lambda: session.restore(state))
    return session


EVAL_KEYS = ("eval.", "trainer.device", "trainer.threads")


def load_run(run_dir: Path, overrides: dict[str, str] | None = None, *,
             device: str | None = None, n_test: int | None = None
             ) -> tuple[RunConfig, Dataset, VAE, dict[str, Any]]:
    """A saved run rebuilt from its checkpoint, with `overrides` (eval.*, trainer.device,
    trainer.threads only) applied: its typed config, data, trained VAE and checkpoint state.
    `device` and `n_test` (with one training image) serve pictures of many runs."""
    run_dir = Path(run_dir)
    ckpt = checkpoint.checkpoint_path(run_dir)
    if not ckpt.exists():
        raise UserError(f"run_dir={run_dir} holds no checkpoint ({ckpt}); give a run "
                        "directory made by vaerun train")
    overrides = dict(overrides or {})
    for key in overrides:
        if not key.startswith(EVAL_KEYS):
            raise UserError(f"{key} cannot change at evaluation; only eval.* and "
                            "trainer.device, trainer.threads")
    state = checkpoint.load(ckpt)
    saved = OmegaConf.create(state["config"])
    if device is not None:
        saved.trainer.device = device
    if n_test is not None:
        saved.dataset.n_train, saved.dataset.n_test = 1, n_test
    OmegaConf.set_struct(saved, True)
    try:
        merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(
            [f"{k}={v}" for k, v in overrides.items()]))
    except OmegaConfBaseException as e:
        raise UserError(f"{getattr(e, 'full_key', '')}: {str(e).splitlines()[0]}") from None
    cfg = typed(merged, training=False)
    set_threads(cfg.trainer.threads)
    data, vae = build(cfg, resolve_device(cfg.trainer.device))
    checkpoint.restore(ckpt, lambda: vae.load_state_dict(state["model"]))
    return cfg, data, vae, state
