"""Config schemas and start-up validation.

Hydra composes `conf/train.yaml`; `typed(cfg)` merges each part onto its dataclass schema (a
wrong type or an unknown key fails here, before any data is read) and runs each schema's
`check()` for ranges. Pluggable parts (dataset, likelihood, model) register themselves by `name`
and carry their own `Config`, so a new one is one small class plus one yaml file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaerun.errors import ConfigError


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed)


def require_positive(key: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    require(ok, key, value, "must be a finite number > 0")


def require_at_least(key: str, value: Any, low: int) -> None:
    require(isinstance(value, int) and value >= low, key, value, f"must be an integer >= {low}")


class Registered:
    """Base of pluggable parts: every subclass that sets `name` is listed in its base's
    `registry`; its nested dataclass `Config` is the schema of its config group."""

    registry: ClassVar[dict[str, type]]
    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "registry" in cls.__dict__:
            return
        if cls.__dict__.get("name"):
            cls.registry[cls.name] = cls

    @classmethod
    def validate(cls, cfg: Any, key: str) -> None:
        """Checks that need the class as well as its Config (none by default)."""

    @classmethod
    def lookup(cls, name: str) -> type:
        if name not in cls.registry:
            options = ", ".join(sorted(cls.registry))
            raise ConfigError(f"{cls.group}.name", name, f"choose one of: {options}")
        return cls.registry[name]


def _to_schema(key: str, node: Any, schema: type) -> Any:
    """Merge `node` onto dataclass `schema`; return the dataclass instance, checked."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        sub = getattr(e, "full_key", None) or getattr(e, "key", None)
        full = f"{key}.{sub}" if sub else key
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(full, getattr(e, "value", None), msg) from None
    check = getattr(obj, "check", None)
    if check is not None:
        check(key)
    return obj


def typed_group(key: str, node: Any, base: type[Registered]) -> Any:
    """The checked Config instance of the registered part that `node.name` names."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    cls = base.lookup(name)
    obj = _to_schema(key, node, cls.Config)
    cls.validate(obj, key)
    return obj


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    seed: int | None = 0
    device: str = "auto"
    log_every: int = 50
    eval_batch_size: int = 2000
    resume: bool = False
    compile: bool = False
    deterministic: bool = False
    threads: int | None = None

    def check(self, key: str) -> None:
        require_at_least(f"{key}.epochs", self.epochs, 0)
        require_at_least(f"{key}.batch_size", self.batch_size, 1)
        require_at_least(f"{key}.log_every", self.log_every, 1)
        require_at_least(f"{key}.eval_batch_size", self.eval_batch_size, 1)
        if self.threads is not None:
            require_at_least(f"{key}.threads", self.threads, 1)
        devices = ("auto", "cpu", "cuda", "mps")
        ok = self.device in devices or self.device.startswith("cuda:")
        require(ok, f"{key}.device", self.device, "choose auto, cpu, cuda, cuda:N or mps")
        from vaerun.train import resolve_device

        resolve_device(self.device)  # CUDA asked for but absent fails here, before any run


@dataclass
class EvalConfig:
    iwae_k: int = 100
    batch_size: int = 500
    seed: int = 0

    def check(self, key: str) -> None:
        require_at_least(f"{key}.iwae_k", self.iwae_k, 0)
        require_at_least(f"{key}.batch_size", self.batch_size, 1)


@dataclass
class RunConfig:
    """The whole run, typed and checked: what train() and evaluate() read."""

    dataset: Any
    likelihood: Any
    model: Any
    optimizer: dict
    trainer: TrainerConfig
    eval: EvalConfig
    beta: float
    plain: dict = field(repr=False, default_factory=dict)


def typed(cfg: DictConfig) -> RunConfig:
    """Validate a composed config (no `hydra` node needed) and return its typed form."""
    from vaerun.data import Dataset
    from vaerun.likelihoods import Likelihood
    from vaerun.model import Model

    beta = cfg.get("beta")
    require_nonneg = isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0
    require(require_nonneg, "beta", beta, "must be a finite number >= 0")
    opt = cfg.get("optimizer")
    require(isinstance(opt, DictConfig) and "_target_" in opt, "optimizer", opt,
            "choose one of the optimizer configs (adam, adamw, sgd, rmsprop)")
    require_positive("optimizer.lr", opt.get("lr"))
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    return RunConfig(
        dataset=typed_group("dataset", cfg.get("dataset"), Dataset),
        likelihood=typed_group("likelihood", cfg.get("likelihood"), Likelihood),
        model=typed_group("model", cfg.get("model"), Model),
        optimizer=OmegaConf.to_container(opt, resolve=True),
        trainer=_to_schema("trainer", cfg.get("trainer"), TrainerConfig),
        eval=_to_schema("eval", cfg.get("eval"), EvalConfig),
        beta=float(beta),
        plain=plain,
    )
