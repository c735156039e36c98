"""A run assembled from its typed config: data, model with its likelihood, optimizer, and the
start-or-resume decision. `vaerun train` and `vaerun eval` build runs here; it imports the part
modules, so their registries are filled before `checked` looks them up.
"""

from __future__ import annotations

import dataclasses
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
from vaerun.checkpoint import Progress
from vaerun.config import Recon, RunConfig, require
from vaerun.data import Dataset
from vaerun.errors import ConfigError, Refused, UserError
from vaerun.likelihoods import Likelihood
from vaerun.model import VAE
from vaerun.objective import Meter, Objective
from vaerun.runtime import resolve_device
from vaerun.schedules import Scheduler

log = logging.getLogger("vaerun")


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


def checked(cfg: DictConfig, training: bool = True) -> RunConfig:
    """The typed, fully checked config of a run: devices, memory and (`training`) optimizer
    included. Checking the optimizer builds one, and torch then imports torch._dynamo: an
    evaluation of a saved run, which never steps, skips it."""
    rc = config.typed(cfg)
    device = resolve_device(rc.trainer.device)  # CUDA asked for but absent fails here
    if training:
        optimizer_kwargs(rc.optimizer)
    check_loss(rc)
    check_batch(rc)
    check_memory(rc, device)
    return rc


def build(cfg: RunConfig, device: torch.device) -> tuple[Dataset, VAE]:
    """The data (in memory on `device`) and the VAE with its likelihood, untrained. With the
    squared error for loss (loss.recon=sse) the Gaussian's σ is the one the loss implies."""
    data = Dataset.lookup(cfg.dataset.name)(cfg.dataset, device)
    lik_cfg = cfg.likelihood
    if cfg.loss.recon == Recon.sse:
        implied = objective(cfg, data.dim).implied(cfg.trainer.batch_size)["implied_sigma"]
        lik_cfg = dataclasses.replace(lik_cfg, sigma=implied)
    lik = Likelihood.lookup(lik_cfg.name)(lik_cfg, data.dim, cfg.model.link.value)
    vae = VAE(cfg.model, lik, data.image_shape).to(device)
    if cfg.model.bias_from_data:
        vae.bias_from_data(data.train.mean(0), cfg.model.link)
    return data, vae


def objective(cfg: RunConfig, pixels: int) -> Objective:
    """The run's loss as written, for images of `pixels` pixels."""
    return Objective(cfg.loss, cfg.beta, pixels, cfg.model.latent_dim)


def check_batch(cfg: RunConfig) -> None:
    """A batch no larger than the training set."""
    sizes = Dataset.lookup(cfg.dataset.name).sizes
    n = cfg.dataset.n_train or (sizes[0] if sizes else None)
    if n is not None and cfg.trainer.batch_size > n:
        raise ConfigError("trainer.batch_size", cfg.trainer.batch_size,
                          f"must be at most the {n} training images (dataset.n_train)")


def check_loss(cfg: RunConfig) -> None:
    """The squared error is the loss of a Gaussian decoder with one fixed σ (the implied one)."""
    if cfg.loss.recon == Recon.sse and cfg.likelihood.name != "gaussian":
        raise ConfigError("loss.recon", "sse", "the squared error is the -log p of a Gaussian "
                          "decoder with one fixed sigma: add likelihood=gaussian (its sigma is "
                          "then the one the loss implies), or use loss.recon=nll")


def make_optimizer(cfg: RunConfig, vae: VAE) -> torch.optim.Optimizer:
    kwargs = optimizer_kwargs(cfg.optimizer)
    return optimizer_class(cfg.optimizer)(vae.param_groups(kwargs["lr"]), **kwargs)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer):
    """The lr schedule over epochs (scheduler=none: a constant factor of 1)."""
    return Scheduler.lookup(cfg.scheduler.name).build(cfg.scheduler, opt, cfg.trainer.epochs)


@dataclass
class Session:
    """Everything a training run holds: what its checkpoint saves and restores."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    data: Dataset
    vae: VAE
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the data order's random stream (on the CPU)
    seed: int
    progress: Progress
    sched: Any = None  # the lr schedule over epochs (a torch.optim.lr_scheduler)
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

    def save(self, status: str) -> None:
        """Write the checkpoint (atomically); `status` is what it records the run as."""
        state = checkpoint.snapshot(
            model=self.vae, optimizer=self.opt, order=self.gen, progress=self.progress,
            device=self.device, seed=self.seed, status=status, meter=self.meter.state(),
            scheduler=self.sched.state_dict(),
            wall_seconds=self.wall_seconds, config=self.cfg.plain)
        checkpoint.save(self.checkpoint_path, state)
        self.status = status

    def restore(self, state: dict[str, Any]) -> None:
        self.progress = checkpoint.resume_into(state, self.vae, self.opt, self.gen, self.device)
        if state.get("scheduler") is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.seed = state["seed"]
        self.resumed, self.status = True, state["status"]
        self.meter = Meter.from_state(state.get("meter"), self.device)
        self.wall_before = state.get("wall_seconds", 0.0)

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.progress.epoch >= self.cfg.trainer.epochs


def _seed(cfg: RunConfig) -> int:
    s = cfg.trainer.seed
    return s if s is not None else int.from_bytes(os.urandom(4), "little") >> 1


def _refuse_resume(cfg: RunConfig, run_dir: Path, state: dict[str, Any]) -> None:
    """Raise Refused unless the checkpoint `state` can continue as this config."""
    changed = checkpoint.config_changes(state["config"], cfg.plain)
    if changed:
        raise Refused(f"the checkpoint in {run_dir} is from another config (differs in "
                      f"{', '.join(changed)}); resume with its overrides or use another "
                      "hydra.run.dir")
    epoch, t = state["epoch"] + (1 if state["batch"] > 0 else 0), cfg.trainer
    if state["status"] == "finished" and state["epoch"] > t.epochs:
        raise Refused(f"the run in {run_dir} finished {state['epoch']} epochs, more than "
                      f"trainer.epochs={t.epochs}; resume with trainer.epochs={state['epoch']} "
                      "or more, or use another hydra.run.dir")
    if state["status"] != "finished" and epoch > t.epochs:
        raise Refused(f"the checkpoint in {run_dir} has begun epoch {epoch} (step "
                      f"{state['step']}), past trainer.epochs={t.epochs}; resume with "
                      f"trainer.epochs={epoch} or more")


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
    device = resolve_device(cfg.trainer.device)
    seed = state["seed"] if state else _seed(cfg)
    torch.manual_seed(seed)
    data, vae = build(cfg, device)
    opt = make_optimizer(cfg, vae)
    session = Session(cfg, run_dir, device, data, vae, opt, torch.Generator().manual_seed(seed),
                      seed, Progress(), make_scheduler(cfg, opt))
    if state is not None:
        checkpoint.restore(path, lambda: session.restore(state))
    return session


EVAL_KEYS = ("eval.", "trainer.device", "trainer.threads")


def load_config(run_dir: Path, overrides: dict[str, str] | None = None
                ) -> tuple[RunConfig, dict[str, Any]]:
    """A saved run's checked config, with `overrides` (eval.*, trainer.device,
    trainer.threads only) applied, and its checkpoint state."""
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
    if not isinstance(state.get("config"), dict):
        raise UserError(f"checkpoint {ckpt} holds no config of a run; delete it to start the "
                        "run again")
    check_record(run_dir, state["config"])
    saved = OmegaConf.create(state["config"])
    OmegaConf.set_struct(saved, True)
    try:
        merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(
            [f"{k}={v}" for k, v in overrides.items()]))
    except OmegaConfBaseException as e:
        raise UserError(f"{getattr(e, 'full_key', '')}: {str(e).splitlines()[0]}") from None
    return checked(merged, training=False), state


def check_record(run_dir: Path, config: dict[str, Any]) -> None:
    """The run's record beside its checkpoint: `.hydra/overrides.yaml` (which the report
    labels the run by) a list of overrides, and `.hydra/config.yaml` the checkpoint's config.
    Either may be missing; one that is there and says otherwise is refused."""
    import yaml

    for name, ok in (("overrides.yaml", lambda v: isinstance(v, list)
                      and all(isinstance(o, str) for o in v)),
                     ("config.yaml", lambda v: v == config)):
        path = run_dir / ".hydra" / name
        if not path.is_file():
            continue
        try:
            good = ok(yaml.safe_load(path.read_text()))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UserError(f"{path} is unreadable ({type(e).__name__}); restore it, or delete "
                            "it (the checkpoint holds the run's config)") from None
        if not good:
            what = "a list of overrides" if name == "overrides.yaml" else "the checkpoint's config"
            raise UserError(f"{path} is not {what}; restore it, or delete it (the checkpoint "
                            "holds the run's config)")


def load_run(run_dir: Path, cfg: RunConfig, state: dict[str, Any]) -> tuple[Dataset, VAE]:
    """The data and trained VAE of a saved run (`load_config`'s config and state)."""
    data, vae = build(cfg, resolve_device(cfg.trainer.device))
    checkpoint.restore(checkpoint.checkpoint_path(run_dir),
                       lambda: vae.load_state_dict(state["model"]))
    return data, vae
