"""The jobs a `vaerun train` command line asks Hydra for, composed and checked before any runs.

Every job of the command (each point of a sweep) is composed exactly as Hydra will compose it
(the same config name, config path and extra config dir flags) and validated, so a typo or a
bad value anywhere stops the command before its first job trains. A config may instantiate
nothing but a torch.optim optimizer: any other `_target_` (Hydra callbacks, nested targets),
and logging classes outside `logging`, are refused, whether they come from the command line or
from a yaml file.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaerun.config import did_you_mean
from vaerun.errors import ConfigError, UserError

EXIT_CODES: list[int] = []  # each job's exit status, as the launcher of this process saw it
MAIN_PID: int | None = None  # the `vaerun train` process (jobs may run in others)
CONFIG_MODULE = "vaerun.conf"
CONFIG_NAME = "train"
EXCLUDE_KEY = "hydra.job.config.override_dirname.exclude_keys"
# Hydra's flags that ask it to show something instead of running jobs
SHOW_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")
# the `_target_`s a config may hold: torch.optim (checked by vaerun.assemble) and Hydra's own
# launcher and sweeper (Hydra instantiates only its plugins there)
TARGETS = ("optimizer._target_", "hydra.launcher._target_", "hydra.sweeper._target_")


def parse(args: list[str]) -> argparse.Namespace:
    """The command line as Hydra itself reads it (flags, overrides, -m)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(args)


def runs_jobs(ns: argparse.Namespace) -> bool:
    return not any(getattr(ns, f, None) for f in SHOW_FLAGS)


def is_multirun(ns: argparse.Namespace) -> bool:
    return bool(ns.multirun) or "hydra.mode=MULTIRUN" in ns.overrides


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job the command would run (one for a single run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _hydra(ns: argparse.Namespace) -> Any:
    """A Hydra with the search path `vaerun train` gets (as hydra.main builds it)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = create_automatic_config_search_path(
        None, "vaerun.cli", ns.config_path or f"pkg://{CONFIG_MODULE}")
    if ns.config_dir is not None:
        path = os.path.abspath(ns.config_dir)
        if not os.path.isdir(path):
            raise UserError(f"--config-dir {path} is not a directory")
        search_path.prepend(provider="command-line", path=f"file://{path}",
                            anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=CONFIG_NAME, config_search_path=search_path)


def composed_jobs(ns: argparse.Namespace) -> Iterator[DictConfig]:
    """Each job's config, with its `hydra` node, composed as Hydra will compose it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    hydra = _hydra(ns)
    try:
        for job in job_overrides(list(ns.overrides), is_multirun(ns)):
            yield _compose(hydra, ns.config_name or CONFIG_NAME, job, RunMode)
    finally:
        GlobalHydra.instance().clear()


def _compose(hydra: Any, name: str, job: list[str], modes: Any) -> DictConfig:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return hydra.compose_config(name, job, run_mode=modes.RUN)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(explain(e, hydra, name, job)) from None


def validate(ns: argparse.Namespace) -> list[DictConfig]:
    """Compose and check every job the command line would run, and return their configs;
    raise UserError on the first bad one. A command line that only shows something (--help,
    --cfg ...) is Hydra's alone: no jobs."""
    from vaerun.assemble import typed

    if not runs_jobs(ns):
        return []
    jobs = []
    single = not is_multirun(ns)  # the run starts in this process: its data are read ahead
    for cfg in composed_jobs(ns):
        refuse_instantiation(OmegaConf.to_container(cfg, resolve=False))
        typed(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), read_ahead=single)
        jobs.append(cfg)
    if jobs:
        key = "hydra.sweep.dir" if is_multirun(ns) else "hydra.run.dir"
        refuse_unwritable(key, str(OmegaConf.select(jobs[0], key)))
    return jobs


def refuse_unwritable(key: str, path: str) -> None:
    """The folder (or the nearest one above it that exists) must be writable."""
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.access(here, os.W_OK):
        raise ConfigError(key, path, f"{here} is not writable (read-only, or not yours); "
                          "choose another folder")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def refuse_instantiation(raw: dict) -> None:
    """No config may make vaerun or Hydra call arbitrary code: `_target_` only where
    TARGETS allows, logging classes only from `logging`."""
    for path, value in _walk(raw):
        leaf = path.rsplit(".", 1)[-1]
        if leaf == "_target_" and path not in TARGETS:
            raise ConfigError(path, value, "vaerun instantiates nothing from a config but "
                              "torch.optim optimizers (optimizer._target_); remove it")
        logging_cfg = path.startswith(("hydra.job_logging.", "hydra.hydra_logging."))
        if logging_cfg and leaf in ("()", "class") and not str(value).startswith("logging."):
            raise ConfigError(path, value, "logging handlers and formatters must be classes "
                              "of Python's logging module")


def explain(e: BaseException, hydra: Any = None, name: str = CONFIG_NAME,
            job: list[str] | None = None) -> str:
    """Hydra's message for a bad override, made one line that names the key and the fix."""
    msg = one_line(e).split(" Config search path:")[0]
    unknown = re.search(r"Could not override '([^']+)'", msg)
    if unknown:
        key = unknown.group(1)
        group = key.split(".")[0]
        hint = did_you_mean(key, _keys(hydra, name, job or [], key)) if hydra else ""
        return (f"{key} is not a key of this config{hint} (check the spelling, or pick a "
                f"{group} option that has it, e.g. vaerun train {group}=... {key}=...; "
                "`vaerun train --cfg job` lists the keys)")
    missing = re.search(r"Could not find '([^/']+)/([^']+)' Available options in '[^']+': (.*)", msg)
    if missing:
        group, choice, options = missing.groups()
        opts = options.split()
        return (f"{group}={choice} is not an option{did_you_mean(choice, opts)}; choose one "
                f"of: {', '.join(opts)}")
    if "LexerNoViableAlt" in msg or "token recognition error" in msg:
        return (f"{msg}: quote values with spaces or characters beyond ASCII, e.g. "
                "'hydra.run.dir=\"outputs/runs/σ=1\"'")
    if "Ambiguous value" in msg:
        msg += " (a sweep needs -m: vaerun train -m ...)"
    return msg


def _keys(hydra: Any, name: str, job: list[str], bad: str) -> list[str]:
    """Every key of the config `job` composes to, without the override of `bad`."""
    from hydra.types import RunMode

    rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != bad]
    try:
        cfg = hydra.compose_config(name, rest, run_mode=RunMode.RUN)
    except Exception:  # noqa: BLE001 (a hint only)
        return []
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    return [path for path, _ in _walk(raw)]


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type",
                                                     "Set the environment variable"))]
    return " ".join(lines) if lines else type(e).__name__


def always_excluded() -> list[str]:
    """The keys conf/train.yaml always leaves out of job folder names (trainer.resume, ...)."""
    conf = OmegaConf.load(str(resources.files(CONFIG_MODULE) / "train.yaml"))
    return list(OmegaConf.select(conf, EXCLUDE_KEY))


def name_by_swept_keys(args: list[str]) -> list[str]:
    """Name each sweep job's folder by the overrides that vary (e.g. `3_likelihood.sigma=1`):
    the constant ones are added to Hydra's override_dirname exclude list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    if any(a.split("=")[0].lstrip("+~") == EXCLUDE_KEY for a in overrides):
        return args
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.is_sweep_override() for o in parsed):
        return args
    constant = [o.key_or_group for o in parsed
                if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    keys = list(dict.fromkeys(always_excluded() + constant))
    return [*args, f"{EXCLUDE_KEY}=[{','.join(keys)}]"]


DEFAULT_RUN_DIR = "outputs/runs/${now:%Y-%m-%d_%H-%M-%S-%f}"  # conf/train.yaml's hydra.run.dir


def run_name(overrides: list[str], when: datetime | None = None) -> str:
    """A single run's folder name: a short time, then what the command changed, e.g.
    `1125-031200_likelihood=gaussian,likelihood.sigma=1` (`default` if nothing), so runs can be
    told apart in TensorBoard as sweep jobs are."""
    skip = set(always_excluded())
    given = {}  # key -> key=value, the last one of a key winning (as in Hydra)
    for o in overrides:
        key = o.split("=")[0].lstrip("+~")
        if not key.startswith("hydra") and key not in skip:
            given[key] = o.lstrip("+~")
    what = ",".join(sorted(given.values())).replace("/", "_") or "default"
    return f"{(when or datetime.now()):%m%d-%H%M%S}_{what[:200]}"


def single_run_dir(ns: argparse.Namespace, jobs: list[DictConfig]) -> str | None:
    """For a single run left to the default folder: the override `hydra.run.dir='...'` that
    names it outputs/runs/<run_name> (a free one); None otherwise."""
    if is_multirun(ns) or len(jobs) != 1:
        return None
    if OmegaConf.to_container(jobs[0].hydra.run, resolve=False).get("dir") != DEFAULT_RUN_DIR:
        return None
    base = f"outputs/runs/{run_name(list(ns.overrides))}".replace("'", "")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return f"hydra.run.dir='{path}'"  # quoted: the name holds = and ,


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra would have written into the job's .hydra/ (vaerun writes it itself, once
    the run directory has accepted the job: a refused command must not relabel a run)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.instance().cfg
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg),
            ".hydra/hydra.yaml": OmegaConf.to_yaml(hc),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hc.hydra.overrides.task)}
