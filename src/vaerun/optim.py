"""The optimizer and its learning-rate schedule.

The optimizer is a torch.optim class named by `optimizer._target_` (nothing else may be named),
its keys checked against that class's own signature and values by building one.

Schedules over epochs are registered classes (a `name`, a `Config`, `build`) with one yaml each
in conf/scheduler/. A schedule steps once at the end of every epoch, and its state is saved in
the checkpoint beside the optimizer's, so a resume continues it exactly.

- `none`: the optimizer's lr throughout (the default);
- `step`: lr · gamma^⌊epoch / step_size⌋ (torch's StepLR);
- `cosine`: from lr down to `min_lr` over trainer.epochs (torch's CosineAnnealingLR);
- `iwae_stages`: Burda et al. (2016)'s schedule: stage i = 0, 1, ... lasts growth^i epochs at
  lr · decay^i; with growth 3, decay 10^(-1/7) and 8 stages, 3,280 epochs from 1e-3 to 1e-4.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vaerun.config import Registered, require, require_at_least, require_positive
from vaerun.errors import ConfigError


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
    """`spec` less `_target_`, each key checked against the optimizer's own signature, the
    values by torch itself (momentum >= 0, betas in [0, 1), ...) building one."""
    cls = optimizer_class(spec)
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    for k, v in kwargs.items():
        require(k in params and k != "params", f"optimizer.{k}", v,
                f"not a parameter of {cls.__name__}; it takes "
                f"{', '.join(p for p in params if p not in ('params', 'self'))}")
        require(v is None or isinstance(v, (int, float, str, list, tuple)), f"optimizer.{k}", v,
                "must be a number, a string or a list of numbers")
    require(not kwargs.get("maximize"), "optimizer.maximize", kwargs.get("maximize"),
            "vaerun minimises its loss, the negative ELBO; maximize=true would climb it")
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:  # IndexError: betas=[0.9]
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        key = next((k for k in reversed(kwargs) if re.search(rf"\b{k.removesuffix('s')}s?\b", msg)
                    or isinstance(e, IndexError) and isinstance(kwargs[k], list)), None)  # torch
        #                                        names the value it refuses (betas: "beta")
        if isinstance(e, IndexError) and key:
            msg = f"too few values; {cls.__name__}'s default is {params[key].default}"
        raise ConfigError(f"optimizer.{key}" if key else "optimizer",
                          kwargs[key] if key else kwargs, msg) from None
    return kwargs


def make_optimizer(spec: dict, param_groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer over `param_groups` (the model's, some with their own lr)."""
    return optimizer_class(spec)(param_groups, **optimizer_kwargs(spec))


@dataclass
class SchedulerConfig:
    name: str = "none"


class Scheduler(Registered):
    """Builds a torch.optim.lr_scheduler for an optimizer and the run's epochs."""

    registry: ClassVar[dict[str, type]] = {}
    group = "scheduler"
    Config = SchedulerConfig
    over_epochs: ClassVar[bool] = False  # its lr depends on trainer.epochs, not on the epoch alone

    @staticmethod
    def build(cfg: Any, opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


class NoSchedule(Scheduler):
    name = "none"

    @dataclass
    class Config(SchedulerConfig):
        name: str = "none"


class Step(Scheduler):
    name = "step"

    @dataclass
    class Config(SchedulerConfig):
        name: str = "step"
        step_size: int = 10  # epochs
        gamma: float = 0.5

        def check(self, key: str) -> None:
            require_at_least(f"{key}.step_size", self.step_size, 1)
            require_positive(f"{key}.gamma", self.gamma)

    @staticmethod
    def build(cfg: Config, opt: torch.optim.Optimizer, epochs: int):
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)


class Cosine(Scheduler):
    name = "cosine"
    over_epochs = True

    @dataclass
    class Config(SchedulerConfig):
        name: str = "cosine"
        min_lr: float = 0.0

        def check(self, key: str) -> None:
            ok = isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr < math.inf
            require(ok, f"{key}.min_lr", self.min_lr, "must be a number >= 0")

    @staticmethod
    def build(cfg: Config, opt: torch.optim.Optimizer, epochs: int):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1), cfg.min_lr)


def stage_of(epoch: int, growth: int) -> int:
    """The stage i that epoch `epoch` (0-based) falls in when stage i lasts growth^i epochs."""
    i, end = 0, 1
    while epoch >= end:
        i += 1
        end += growth**i
    return i


class IWAEStages(Scheduler):
    """Burda, Grosse & Salakhutdinov (2016), Section 5: 'for i = 0 ... 7 we ran 3^i passes over
    the data with learning rate 0.001 · 10^(−i/7)'. (Their code, experiments.py, rounds the
    factor to one decimal: 7.2 for 10^(6/7) = 7.197, ...: within 1.5% of it.) Past the last
    stage the lr stays at the last stage's."""

    name = "iwae_stages"

    @dataclass
    class Config(SchedulerConfig):
        name: str = "iwae_stages"
        stages: int = 8
        growth: int = 3  # stage i lasts growth^i epochs
        decay: float = 10 ** (-1 / 7)  # the lr factor from one stage to the next

        def check(self, key: str) -> None:
            require_at_least(f"{key}.stages", self.stages, 1)
            require_at_least(f"{key}.growth", self.growth, 1)
            require_positive(f"{key}.decay", self.decay)

    @staticmethod
    def epochs(cfg: Config) -> int:
        """The schedule's length in epochs (3,280 for 8 stages of 3^i)."""
        return sum(cfg.growth**i for i in range(cfg.stages))

    @staticmethod
    def build(cfg: Config, opt: torch.optim.Optimizer, epochs: int):
        last = cfg.stages - 1
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: cfg.decay ** min(stage_of(epoch, cfg.growth), last))
