"""Config schemas and start-up validation: the bottom of the house (it imports no stage).

Hydra composes `conf/train.yaml`; `typed(cfg)` merges each part onto its dataclass schema (a
wrong type or an unknown key fails here, before any data is read) and runs each schema's
`check()` for ranges. Pluggable parts (dataset, likelihood, model) subclass `Registered`: each
registers itself by `name` in its group's registry and carries its own `Config`, so a new one is
one small class plus one yaml file. The part modules fill the registries; whoever assembles a
run imports them (vaerun.assemble) before calling `typed`.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaerun.errors import ConfigError

REGISTRIES: dict[str, dict[str, type]] = {}  # group -> {name: class}, filled by the parts
TOP_KEYS = ("dataset", "likelihood", "model", "optimizer", "scheduler", "trainer", "eval", "beta",
            "loss")
MAX_SEED = 2**63 - 1  # torch.manual_seed's range


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the closest of `options`, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def is_number(value: Any) -> bool:
    """A real int or float (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed)


FLOAT32_TINY, FLOAT32_MAX = 1.1754944e-38, 3.4028235e38  # the normal float32 range


def require_positive(key: str, value: Any) -> None:
    """A number > 0 that float32 holds as a normal number: torch computes in float32, where a
    denormal or an overflow turns its logarithm into a NaN or an infinity."""
    ok = is_number(value) and math.isfinite(value) and FLOAT32_TINY <= value <= FLOAT32_MAX
    require(ok, key, value, f"must be a number > 0 that float32 holds, from {FLOAT32_TINY:.4g} "
            f"to {FLOAT32_MAX:.4g}")


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
    progress_seconds: float | None = 10.0
    pictures_every: int = 1  # epochs between pictures while training (the end always has them)

    def check(self, key: str) -> None:
        require_at_least(f"{key}.epochs", self.epochs, 0)
        require_at_least(f"{key}.pictures_every", self.pictures_every, 1)
        if self.progress_seconds is not None:
            ok = is_number(self.progress_seconds) and 0 <= self.progress_seconds < math.inf
            require(ok, f"{key}.progress_seconds", self.progress_seconds,
                    "must be a number of seconds >= 0 (or null: no progress lines)")
        require_at_least(f"{key}.batch_size", self.batch_size, 1)
        require_at_least(f"{key}.log_every", self.log_every, 1)
        require_at_least(f"{key}.eval_batch_size", self.eval_batch_size, 1)
        if self.threads is not None:
            most = 4 * (os.cpu_count() or 1)
            ok = isinstance(self.threads, int) and 1 <= self.threads <= most
            require(ok, f"{key}.threads", self.threads, f"must be an integer from 1 to {most} "
                    f"(4 times this machine's {os.cpu_count()} CPUs), or null")
        if self.seed is not None:
            require_seed(f"{key}.seed", self.seed)
        devices = ("auto", "cpu", "cuda", "mps")
        ok = self.device in devices or self.device.startswith("cuda:")
        require(ok, f"{key}.device", self.device, "choose auto, cpu, cuda, cuda:N or mps")


@dataclass
class EvalConfig:
    iwae_k: int = 100
    batch_size: int = 500
    seed: int = 0
    quality_images: int = 10000  # sample quality (test/fid_*) on this many images; 0: not scored

    def check(self, key: str) -> None:
        require_at_least(f"{key}.iwae_k", self.iwae_k, 0)
        require_at_least(f"{key}.quality_images", self.quality_images, 0)
        require_at_least(f"{key}.batch_size", self.batch_size, 1)
        require_seed(f"{key}.seed", self.seed)


class Over(str, enum.Enum):
    sum = "sum"
    mean = "mean"


class Recon(str, enum.Enum):
    nll = "nll"  # the likelihood's −log p(x|z), per image (the BCE, for bernoulli)
    sse = "sse"  # Σ_d (x_d − f(z)_d)², as F.mse_loss computes it (likelihood=gaussian)


@dataclass
class LossConfig:
    """The loss as its code writes it: over a batch of B images with D pixels and d latents,

        loss = recon_weight · [Σ or mean over the batch] [Σ or mean over the pixels] R
             + beta · [Σ or mean over the batch] [Σ or mean over the latents] KL,

    R the reconstruction term of each pixel (recon: the likelihood's −log p, or the squared
    error), KL that of each latent. A mean over pixels, latents or the batch is a factor 1/D,
    1/d or 1/B. `name`, `written` and `source` say what it is (a recipe's, or the user's)."""

    name: str = "elbo"
    recon: Recon = Recon.nll
    recon_over_pixels: Over = Over.sum
    recon_over_batch: Over = Over.mean
    recon_weight: float = 1.0
    kl_over_latents: Over = Over.sum
    kl_over_batch: Over = Over.mean
    written: str = ""
    source: str = ""

    def check(self, key: str) -> None:
        require_positive(f"{key}.recon_weight", self.recon_weight)


def require_seed(key: str, value: Any) -> None:
    require(isinstance(value, int) and 0 <= value <= MAX_SEED, key, value,
            f"must be an integer from 0 to 2^63 - 1 = {MAX_SEED}")


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
    loss: LossConfig = field(default_factory=LossConfig)
    plain: dict = field(repr=False, default_factory=dict)
    scheduler: Any = None


def refuse_environment(node: Any, path: str = "") -> None:
    """No ${oc.env:...} in a run's config: its resolved value would be stored in the
    checkpoint and metrics (a secret, or a value no one can see in the command)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not (path == "" and k == "hydra"):
                refuse_environment(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            refuse_environment(v, f"{path}[{i}]")
    elif isinstance(node, str) and "oc.env" in node:
        raise ConfigError(path, node, "environment variables are not read into a run's config "
                          "(the checkpoint would store their value); write the value itself")


def refuse_unknown(raw: dict) -> None:
    for k, v in raw.items():
        if k not in TOP_KEYS and k != "hydra":
            raise ConfigError(str(k), v, "not a key of vaerun's config, which has "
                              f"{', '.join(TOP_KEYS)}{did_you_mean(str(k), TOP_KEYS)}")


def typed(cfg: DictConfig) -> RunConfig:
    """Validate a composed config (no `hydra` node needed) and return its typed form.
    The part modules must be imported first (they fill the registries)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    refuse_environment(raw)
    refuse_unknown(raw)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException as e:
        raise ConfigError(str(getattr(e, "full_key", "") or "config"), None,
                          str(getattr(e, "msg", e)).splitlines()[0]) from None
    plain.pop("hydra", None)
    beta = cfg.get("beta")
    require(is_number(beta) and math.isfinite(beta) and beta >= 0, "beta", beta,
            "must be a finite number >= 0")
    opt = cfg.get("optimizer")
    require(isinstance(opt, DictConfig) and "_target_" in opt, "optimizer", opt,
            "choose one of the optimizer configs (adam, adamw, sgd, rmsprop)")
    require_positive("optimizer.lr", opt.get("lr"))
    return RunConfig(
        dataset=typed_group("dataset", cfg.get("dataset")),
        likelihood=typed_group("likelihood", cfg.get("likelihood")),
        model=typed_group("model", cfg.get("model")),
        optimizer=OmegaConf.to_container(opt, resolve=True),
        trainer=_to_schema("trainer", cfg.get("trainer"), TrainerConfig),
        eval=_to_schema("eval", cfg.get("eval"), EvalConfig),
        beta=float(beta),
        loss=_to_schema("loss", cfg.get("loss") or {}, LossConfig),
        plain=plain,
        scheduler=typed_group("scheduler", cfg.get("scheduler") or OmegaConf.create({"name": "none"})),
    )


HEADLINE = ["test/elbo", "test/log_px_z", "test/kl", "test/mse", "test/nll_iwae",
            "test/bits_per_dim", "test/active_units", "test/implied_sigma", "test/implied_beta",
            "test/elbo_calibrated", "test/bits_per_dim_calibrated", "test/fid_mean",
            "test/fid_sample"]  # HParams' metric columns, in this order
LOSS_KEYS = ("recon", "recon_over_pixels", "recon_over_batch", "recon_weight",
             "kl_over_latents", "kl_over_batch")  # the loss's keys runs are compared by
PARTS = ("likelihood", "dataset", "model", "scheduler")
UNTRACKED = ("trainer.resume", "trainer.progress_seconds")  # never change what a run computes


def hparams(cfg: RunConfig, seed: int) -> dict[str, Any]:
    """The hyperparameters runs are compared by (TensorBoard's HParams): every key of each part
    as the part reports it (`likelihood`, `likelihood.sigma`, ...), and the training keys."""
    out: dict[str, Any] = {}
    for group in PARTS:
        part = getattr(cfg, group)
        for k, v in lookup(group, part.name).hparams(part).items():
            out[group if k == "name" else f"{group}.{k}"] = v
    out["optimizer"] = str(cfg.optimizer["_target_"]).rsplit(".", 1)[-1]
    out.update({f"optimizer.{k}": v for k, v in cfg.optimizer.items() if k != "_target_"})
    for group in ("trainer", "eval"):
        out.update({f"{group}.{f.name}": _plain(getattr(getattr(cfg, group), f.name))
                    for f in fields(getattr(cfg, group))})
    out.update({"beta": cfg.beta, "trainer.seed": seed, "loss": cfg.loss.name})
    out.update({f"loss.{k}": _plain(getattr(cfg.loss, k)) for k in LOSS_KEYS})
    return {k: v for k, v in out.items() if k not in UNTRACKED and v is not None
            and isinstance(v, (bool, int, float, str))}


def hparam_columns() -> dict[str, type]:
    """Every hyperparameter any run can report (all registered parts' keys), with its type: the
    same column list in every run's HParams experiment, whichever run TensorBoard reads it from."""
    cols: dict[str, type] = {}
    for group in PARTS:
        cols[group] = str
        for cls in REGISTRIES[group].values():
            reported = cls.hparams(cls.Config())
            for f in fields(cls.Config):
                if f.name != "name" and f.name in reported:
                    cols[f"{group}.{f.name}"] = _kind(f.type)
    cols.update({"optimizer": str, "optimizer.lr": float, "optimizer.weight_decay": float,
                 "optimizer.momentum": float})
    for group, schema in (("trainer", TrainerConfig), ("eval", EvalConfig)):
        cols.update({f"{group}.{f.name}": _kind(f.type) for f in fields(schema)})
    cols["beta"] = float
    cols["loss"] = str
    cols.update({f"loss.{f.name}": _kind(f.type) for f in fields(LossConfig)
                 if f.name in LOSS_KEYS})
    return {k: v for k, v in cols.items() if k not in UNTRACKED}


def _kind(annotation: Any) -> type:
    text = str(annotation)
    return bool if "bool" in text else float if ("int" in text or "float" in text) else str
