"""Config schemas and start-up validation: the bottom of the house (it imports no stage).

Hydra composes `conf/train.yaml`; `typed(cfg)` merges each part onto its dataclass schema (a
wrong type or an unknown key fails here, before any data is read) and runs each schema's
`check()` for ranges. Pluggable parts (dataset, likelihood, model) subclass `Registered`: each
registers itself by `name` in its group's registry and carries its own `Config`, so a new one is
one small class plus one yaml file. The part modules fill the registries; whoever assembles a
run imports them (vaerun.assemble) before calling `typed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaerun.errors import ConfigError

REGISTRIES: dict[str, dict[str, type]] = {}  # group -> {name: class}, filled by the parts


def is_number(value: Any) -> bool:
    """A real int or float (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed)


def require_positive(key: str, value: Any) -> None:
    ok = is_number(value) and math.isfinite(value) and value > 0
    require(ok, key, value, "must be a finite number > 0")


def require_at_least(key: str, value: Any, low: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key, value, f"must be an integer >= {low}")


class Registered:
    """Base of pluggable parts: every subclass that sets `name` is listed in its base's
    `registry`; its nested dataclass `Config` is the schema of its config group."""

    registry: ClassVar[dict[str, type]]
    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "registry" in cls.__dict__:  # a group's base class: its registry is the group's
            REGISTRIES[cls.group] = cls.registry
            return
        if cls.__dict__.get("name"):
            cls.registry[cls.name] = cls

    @classmethod
    def validate(cls, cfg: Any, key: str) -> None:
        """Checks that need the class as well as its Config (none by default)."""

    @classmethod
    def lookup(cls, name: str) -> type:
        return lookup(cls.group, name)

    @staticmethod
    def hparams(cfg: Any) -> dict[str, Any]:
        """The keys of this part's config worth comparing runs by: every scalar key."""
        return {f.name: _plain(getattr(cfg, f.name)) for f in fields(cfg)}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enums as their strings


def lookup(group: str, name: Any) -> type:
    """The registered class `name` of config group `group`."""
    registry = REGISTRIES[group]
    if name not in registry:
        raise ConfigError(f"{group}.name", name, f"choose one of: {', '.join(sorted(registry))}")
    return registry[name]


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


def typed_group(key: str, node: Any) -> Any:
    """The checked Config instance of the registered part that `node.name` names."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    cls = lookup(key, name)
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
    """The whole run, typed and checked: what training and evaluation read."""

    dataset: Any
    likelihood: Any
    model: Any
    optimizer: dict
    trainer: TrainerConfig
    eval: EvalConfig
    beta: float
    plain: dict = field(repr=False, default_factory=dict)


def typed(cfg: DictConfig) -> RunConfig:
    """Validate a composed config (no `hydra` node needed) and return its typed form.
    The part modules must be imported first (they fill the registries)."""
    beta = cfg.get("beta")
    require(is_number(beta) and math.isfinite(beta) and beta >= 0, "beta", beta,
            "must be a finite number >= 0")
    opt = cfg.get("optimizer")
    require(isinstance(opt, DictConfig) and "_target_" in opt, "optimizer", opt,
            "choose one of the optimizer configs (adam, adamw, sgd, rmsprop)")
    require_positive("optimizer.lr", opt.get("lr"))
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    return RunConfig(
        dataset=typed_group("dataset", cfg.get("dataset")),
        likelihood=typed_group("likelihood", cfg.get("likelihood")),
        model=typed_group("model", cfg.get("model")),
        optimizer=OmegaConf.to_container(opt, resolve=True),
        trainer=_to_schema("trainer", cfg.get("trainer"), TrainerConfig),
        eval=_to_schema("eval", cfg.get("eval"), EvalConfig),
        beta=float(beta),
        plain=plain,
    )


def hparams(cfg: RunConfig, seed: int) -> dict[str, Any]:
    """The hyperparameters runs are compared by (TensorBoard's HParams): every key of each part
    as the part reports it (`dataset`, `likelihood.sigma`, ...), and the training keys."""
    out: dict[str, Any] = {}
    for group in ("dataset", "likelihood", "model"):
        part = getattr(cfg, group)
        for k, v in lookup(group, part.name).hparams(part).items():
            out[group if k == "name" else f"{group}.{k}"] = v
    t = cfg.trainer
    out.update(beta=cfg.beta, optimizer=str(cfg.optimizer["_target_"]).rsplit(".", 1)[-1],
               lr=cfg.optimizer["lr"], seed=seed, epochs=t.epochs, batch_size=t.batch_size)
    return out
