"""Config schemas and their checks, the bottom of the house (it imports no stage): `typed(cfg)`
merges each part of a composed config onto its dataclass schema (a wrong type or an unknown key
fails here), bounds every number (`bounded`, one rule for all keys) and runs each `check()`.
Pluggable parts (dataset, likelihood, model, scheduler) subclass `Registered`: a new one is one
small class plus one yaml file. What does not change a result is said once, as field metadata
(NEUTRAL: changes no result, but for float rounding where threads or the device split sums
otherwise; RESUMABLE: may change when a run resumes): `free_keys()`.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from vaerun.errors import ConfigError

REGISTRIES: dict[str, dict[str, type]] = {}  # group -> {name: class}, filled by the parts
PARTS = ("likelihood", "dataset", "model", "scheduler")
TOP_KEYS = (*PARTS, "optimizer", "trainer", "eval", "beta", "loss")
FLOAT32_TINY, FLOAT32_MAX = 1.1754944e-38, 3.4028235e38  # the normal float32 range
MAX_INT = 2**63 - 1  # torch's integers (and seeds)
NEUTRAL = {"result": False}  # field metadata: this key changes no result (but float rounding)
RESUMABLE = {"resume": True}  # this key may change when a run resumes
PATHS = ("dataset.root", "eval.inception_weights")  # a file or folder: a relative one is made
#                                   absolute as `vaerun train` reads it (the run's records name it)


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


def require_positive(key: str, value: Any) -> None:
    """A number > 0 that float32 holds as a normal number (else its log is a NaN or inf)."""
    ok = is_number(value) and FLOAT32_TINY <= value <= FLOAT32_MAX
    require(ok, key, value, f"must be a number > 0 that float32 holds, from {FLOAT32_TINY:.4g} "
            f"to {FLOAT32_MAX:.4g}")


def require_at_least(key: str, value: Any, low: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key, value, f"must be an integer >= {low}")


def flat(node: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of nested dicts and lists by its path (`model.hidden[0]`), under `path`."""
    if isinstance(node, (dict, list)):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        sub = ("{}.{}" if path else "{1}") if isinstance(node, dict) else "{}[{}]"
        return {k: v for key, val in items for k, v in flat(val, sub.format(path, key)).items()}
    return {path: node}


def bounded(node: Any) -> None:
    """Every number of a config within what torch computes with: floats finite and in float32's
    range, integers in int64's."""
    for path, v in flat(node).items():
        if isinstance(v, float):
            require(math.isfinite(v) and abs(v) <= FLOAT32_MAX, path, v, "must be a finite "
                    f"number of at most {FLOAT32_MAX:.4g} in size (float32's range)")
        elif is_number(v):
            require(abs(v) <= MAX_INT, path, v, f"must be an integer of at most {MAX_INT}")


class Registered:
    """Base of pluggable parts: a subclass that sets `name` is listed in its group's `registry`;
    its nested dataclass `Config` is the schema of its config group."""

    registry: ClassVar[dict[str, type]]
    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "registry" in cls.__dict__:  # a group's base class: its registry is the group's
            REGISTRIES[cls.group] = cls.registry
        elif cls.__dict__.get("name"):
            old = cls.registry.get(cls.name)  # another module's class of that name: refused
            if old is not None and old.__module__ != cls.__module__:  # (a cell run again: taken)
                raise TypeError(f"{cls.__module__}.{cls.__qualname__} is named {cls.name!r}, "
                                f"as {old.__module__}.{old.__qualname__} is: a {cls.group} of "
                                "that name exists; choose another name")
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
        return {f.name: getattr(getattr(cfg, f.name), "value", getattr(cfg, f.name))
                for f in fields(cfg)}


def lookup(group: str, name: Any) -> type:
    """The registered class `name` of config group `group`."""
    registry = REGISTRIES[group]
    require(name in registry, f"{group}.name", name, f"choose one of: {', '.join(sorted(registry))}"
            " (a class of your own: import it first, or install it as a vaerun.parts entry point; "
            "docs/python.md)")
    return registry[name]


def to_schema(key: str, node: Any, schema: type, option: str = "") -> Any:
    """Merge `node` onto dataclass `schema` (of `option`, a group's, if given); the dataclass
    instance, checked."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        sub = getattr(e, "full_key", None) or getattr(e, "key", None)
        if isinstance(e, ConfigKeyError) and sub:  # a key added with +key=value
            names, of = [f.name for f in fields(schema)], f"{key}={option}" if option else key
            raise ConfigError(f"{key}.{sub}", None, "", f"{key}.{sub} is not a key of {of}"
                              f"{did_you_mean(str(sub), names)}; its keys: {', '.join(names)}"
                              ) from None
        raise ConfigError(f"{key}.{sub}" if sub else key, getattr(e, "value", None),
                          str(getattr(e, "msg", e)).splitlines()[0]) from None
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


def typed_group(key: str, node: Any) -> Any:
    """The checked Config instance of the registered part that `node.name` names; a key of
    another option (a recipe's likelihood.variance with likelihood=gaussian) names that one."""
    cls = lookup(key, node.get("name") if isinstance(node, DictConfig) else None)
    try:
        obj = to_schema(key, node, cls.Config, cls.name)
    except ConfigError as e:
        sub = e.key.split(".")[1] if e.key.count(".") == 1 else ""
        has = [n for n, c in REGISTRIES[key].items() if sub in {f.name for f in fields(c.Config)}]
        if not has or sub in {f.name for f in fields(cls.Config)}:
            raise
        raise ConfigError(e.key, None, "", f"{e.key} is a key of {key}={', '.join(has)}, not of "
                          f"{key}={cls.name}: choose {key}={has[0]} (a recipe that sets "
                          f"{e.key} needs it), or drop the key") from None
    cls.validate(obj, key)
    return obj


@dataclass
class TrainerConfig:
    epochs: int = field(default=10, metadata=RESUMABLE)
    batch_size: int = 128
    seed: int | None = 0
    device: str = field(default="auto", metadata=NEUTRAL)
    log_every: int = field(default=50, metadata=RESUMABLE)
    eval_batch_size: int = field(default=2000, metadata=RESUMABLE)
    resume: bool = field(default=False, metadata=NEUTRAL)
    compile: Any = field(default="auto", metadata=RESUMABLE)  # auto | true | false
    deterministic: bool = False
    threads: int | None = field(default=None, metadata=NEUTRAL)
    progress_seconds: float | None = field(default=10.0, metadata=NEUTRAL)
    pictures_every: int = field(default=1, metadata=NEUTRAL)  # epochs between pictures

    def check(self, key: str) -> None:
        for k in ("epochs", "batch_size", "log_every", "eval_batch_size", "pictures_every"):
            require_at_least(f"{key}.{k}", getattr(self, k), 0 if k == "epochs" else 1)
        if self.progress_seconds is not None:
            require(is_number(self.progress_seconds) and self.progress_seconds >= 0,
                    f"{key}.progress_seconds", self.progress_seconds,
                    "must be a number of seconds >= 0 (or null: no progress lines)")
        if self.threads is not None:
            require_threads(f"{key}.threads", self.threads)
        if self.seed is not None:
            require_seed(f"{key}.seed", self.seed)
        require(str(self.compile).lower() in ("auto", "true", "false"), f"{key}.compile",
                self.compile, "choose auto (capture the step on CUDA), true or false")
        ok = self.device in ("auto", "cpu", "cuda", "mps") or (
            self.device.startswith("cuda:") and self.device[5:].isdecimal())
        require(ok, f"{key}.device", self.device, "choose auto, cpu, cuda, cuda:N or mps")


def require_threads(key: str, value: Any) -> None:
    most = 4 * (os.cpu_count() or 1)
    require(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most, key,
            value, f"must be an integer from 1 to {most} (4 times this machine's "
            f"{os.cpu_count()} CPUs), or null")


def require_seed(key: str, value: Any) -> None:
    require(isinstance(value, int) and 0 <= value <= MAX_INT, key, value,
            f"must be an integer from 0 to 2^63 - 1 = {MAX_INT}")


@dataclass
class EvalConfig:  # every key may change at evaluation and on resume
    iwae_k: int = field(default=100, metadata=RESUMABLE)
    batch_size: int = field(default=500, metadata=RESUMABLE)
    seed: int = field(default=0, metadata=RESUMABLE)
    quality_images: int = field(default=10000, metadata=RESUMABLE)  # 0: no sample quality
    # Inception v3 weights (a local file: nothing is downloaded) to score images not digits
    inception_weights: str | None = field(default=None, metadata=RESUMABLE)

    def check(self, key: str) -> None:
        if self.inception_weights is not None:
            require(os.path.isfile(os.path.expanduser(self.inception_weights)),
                    f"{key}.inception_weights", self.inception_weights, "not a file: give the "
                    "path of Inception v3 weights (torch-fidelity's pt_inception-2015-12-05)")
        require_at_least(f"{key}.iwae_k", self.iwae_k, 0)
        require_at_least(f"{key}.quality_images", self.quality_images, 0)
        require(self.quality_images != 1, f"{key}.quality_images", 1, "must be 0 (no sample "
                "quality) or at least 2: a Fréchet distance compares two covariances")
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
    """The loss as its code writes it, over a batch of B images of D pixels and d latents:
    recon_weight · [Σ|mean over the batch] [Σ|mean over pixels] R + beta · [Σ|mean over the
    batch] [Σ|mean over latents] KL, R each pixel's −log p (nll) or squared error (sse)."""

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


LOSS_KEYS = ("recon", "recon_over_pixels", "recon_over_batch", "recon_weight",
             "kl_over_latents", "kl_over_batch")  # the loss's keys runs are compared by


def free_keys(resume: bool = False) -> list[str]:
    """The keys that never change a result (`resume`: and those a resume may change)."""
    out = []
    for group, schema in (("trainer", TrainerConfig), ("eval", EvalConfig)):
        out += [f"{group}.{f.name}" for f in fields(schema) if f.metadata == NEUTRAL
                or (resume and f.metadata == RESUMABLE)]
    return out


def defaults(plain: dict[str, Any]) -> dict[str, Any]:
    """The schema's default of every key of the options a config names, flat (`model.init`):
    the value a run saved before that key was in its yaml file had."""
    out: dict[str, Any] = {}
    for group in (*PARTS, "trainer", "eval", "loss"):
        name = plain[group].get("name") if isinstance(plain.get(group), dict) else None
        schema = {"trainer": TrainerConfig, "eval": EvalConfig, "loss": LossConfig}.get(group) or \
            getattr(REGISTRIES[group].get(name) if isinstance(name, str) else None, "Config", None)
        if schema is not None:
            out.update(flat(Registered.hparams(schema()), group))
    return out


@dataclass
class RunConfig:  # the whole run, typed and checked: what training and evaluation read
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


def typed(cfg: DictConfig) -> RunConfig:
    """Validate a composed config (no `hydra` node needed) and return its typed form.
    The part modules must be imported first (they fill the registries)."""
    raw = OmegaConf.to_container(cfg, resolve=False)  # (resolved below)
    for k, v in raw.items():
        require(k in TOP_KEYS or k == "hydra", str(k), v, "not a key of vaerun's config, which "
                f"has {', '.join(TOP_KEYS)}{did_you_mean(str(k), TOP_KEYS)}")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "config")
        raise ConfigError(key, flat(raw).get(key), str(getattr(e, "msg", e)).splitlines()[0]
                          ) from None
    plain.pop("hydra", None)
    plain.setdefault("scheduler", {"name": "none"})  # runs saved before schedules existed
    for k in (*PARTS, "trainer", "eval"):  # deleted (~k): needed
        require(isinstance(plain.get(k), dict), k, plain.get(k), "vaerun's config needs it: "
                + (f"choose an option, {k}=... (vaerun train --help lists them)" if k in PARTS
                   else f"set its keys, {k}.KEY=VALUE") + f", rather than delete it (~{k})")
    bounded(plain)
    beta = plain.get("beta")
    require(is_number(beta) and beta >= 0, "beta", beta, "must be a finite number >= 0")
    opt = plain.get("optimizer")
    require(isinstance(opt, dict) and "_target_" in opt, "optimizer", opt,
            "choose one of the optimizer configs (adam, adamw, sgd, rmsprop)")
    require_positive("optimizer.lr", opt.get("lr"))
    node = OmegaConf.create(plain)
    return RunConfig(**{g: typed_group(g, node[g]) for g in PARTS}, optimizer=opt,
                     trainer=to_schema("trainer", node.get("trainer"), TrainerConfig),
                     eval=to_schema("eval", node.get("eval"), EvalConfig), beta=float(beta),
                     loss=to_schema("loss", node.get("loss") or {}, LossConfig), plain=plain)


# -- HParams: the columns runs are compared by ----------------------------------------------------
HEADLINE = ["test/implied_sigma", "test/implied_beta", "test/elbo", "test/nll_iwae",
            "test/bits_per_dim", "test/kl", "test/active_units", "test/log_px_z", "test/mse",
            "test/elbo_calibrated", "test/bits_per_dim_calibrated", "test/fid_mean",
            "test/fid_sample"]  # HParams' metric columns, in this order
DEFINING = ["likelihood", "likelihood.sigma", "beta", "loss", "dataset", "model"]


def hparams(cfg: RunConfig, seed: int) -> dict[str, Any]:
    """The hyperparameters runs are compared by (TensorBoard's HParams): every key of each part
    as the part reports it (`likelihood`, `likelihood.sigma`, ...), and the training keys."""
    out: dict[str, Any] = {"beta": cfg.beta, "loss": cfg.loss.name}
    for group in PARTS:
        part = getattr(cfg, group)
        for k, v in lookup(group, part.name).hparams(part).items():
            out[group if k == "name" else f"{group}.{k}"] = v
    out["optimizer"] = str(cfg.optimizer["_target_"]).rsplit(".", 1)[-1]
    out.update({f"optimizer.{k}": v for k, v in cfg.optimizer.items() if k != "_target_"})
    for group in ("trainer", "eval"):
        part = getattr(cfg, group)
        out.update({f"{group}.{f.name}": getattr(part, f.name) for f in fields(part)})
    out["trainer.seed"] = seed
    out.update({f"loss.{k}": getattr(getattr(cfg.loss, k), "value", getattr(cfg.loss, k))
                for k in LOSS_KEYS})
    return {k: v for k, v in out.items() if v is not None and isinstance(v, (bool, int, float, str))}


def hparam_columns(first: list[str] | tuple = (), swept: bool = False) -> dict[str, type]:
    """Every hyperparameter any run can report, with its type, in the order HParams shows them:
    what defines the experiment, and `first` (what the command varied: before it in a sweep),
    the rest, and last what never changes a result (threads, device, ...)."""
    cols: dict[str, type] = {}
    for group in PARTS:
        cols[group] = str
        for cls in REGISTRIES[group].values():
            reported = cls.hparams(cls.Config())
            cols.update({f"{group}.{f.name}": _kind(f.type) for f in fields(cls.Config)
                         if f.name != "name" and f.name in reported})
    cols.update({"optimizer": str, "optimizer.lr": float, "optimizer.weight_decay": float,
                 "optimizer.momentum": float, "beta": float, "loss": str})
    for group, schema in (("trainer", TrainerConfig), ("eval", EvalConfig)):
        cols.update({f"{group}.{f.name}": _kind(f.type) for f in fields(schema)})
    cols.update({f"loss.{f.name}": _kind(f.type) for f in fields(LossConfig) if f.name in LOSS_KEYS})
    last = free_keys()
    lead = (*first, *DEFINING) if swept else (*DEFINING, *first)
    order = [k for k in lead if k in cols] + [k for k in cols if k not in last]
    return {k: cols[k] for k in dict.fromkeys([*order, *last])}


def _kind(annotation: Any) -> type:
    text = str(annotation)
    return bool if "bool" in text else float if ("int" in text or "float" in text) else str
