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
import contextlib
import difflib
import itertools
import os
import re
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaerun.config import did_you_mean
from vaerun.errors import ConfigError, UserError

CONFIG_MODULE = "vaerun.conf"
CONFIG_NAME = "train"
EXCLUDE_KEY = "hydra.job.config.override_dirname.exclude_keys"
# Hydra's flags that vaerun passes through, each (names, value: "flag" | "value" | "optional",
# choices); every other flag of Hydra's (--experimental-rerun unpickles a file,
# --shell-completion installs a hook) is refused. They are named here and nowhere else.
HYDRA_FLAGS = [
    (("--help", "-h"), "flag", None),
    (("--hydra-help",), "flag", None),
    (("--cfg", "-c"), "value", ("job", "hydra", "all")),
    (("--resolve",), "flag", None),
    (("--package", "-p"), "value", None),
    (("--run", "-r"), "flag", None),
    (("--multirun", "-m"), "flag", None),
    (("--config-path", "-cp"), "value", None),
    (("--config-name", "-cn"), "value", None),
    (("--config-dir", "-cd"), "value", None),
    (("--info", "-i"), "optional",
     ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")),
]
# Hydra's flags that ask it to show something instead of running jobs
SHOW_FLAGS = ("help", "hydra_help", "cfg", "info")
# the `_target_`s a config may hold: torch.optim (checked by vaerun.assemble) and Hydra's own
# launcher and sweeper (Hydra instantiates only its plugins there)
TARGETS = ("optimizer._target_", "hydra.launcher._target_", "hydra.sweeper._target_")
PLUGINS = ("hydra_plugins.", "hydra._internal.core_plugins.")  # where Hydra's plugins live
LOGGING_CLASS = re.compile(r"^logging\.(handlers\.)?[A-Z]\w*$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print its usage and exit
        raise UserError(f"{message}; vaerun train takes key=value overrides and Hydra's flags "
                        f"{', '.join(names[0] for names, _, _ in HYDRA_FLAGS)}")


def parse(args: list[str]) -> argparse.Namespace:
    """The command line of `vaerun train`: overrides anywhere among the flags that HYDRA_FLAGS
    lets through; any other flag is a UserError."""
    p = _Parser(prog="vaerun train", add_help=False, allow_abbrev=False)
    for names, kind, choices in HYDRA_FLAGS:
        if kind == "flag":
            p.add_argument(*names, dest=_dest(names), action="store_true")
        else:
            p.add_argument(*names, dest=_dest(names), choices=choices,
                           nargs="?" if kind == "optional" else None,
                           const="all" if kind == "optional" else None)
    p.add_argument("overrides", nargs="*")
    for a in args:
        if a.startswith("-") and not _known_flag(a):
            raise UserError(f"{a.split('=')[0]} is not a flag vaerun passes to Hydra (only "
                            f"{', '.join(n[0] for n, _, _ in HYDRA_FLAGS)}); remove it")
    return p.parse_intermixed_args(args)


def _dest(names: tuple[str, ...]) -> str:
    """The namespace attribute of a flag (--config-name: config_name)."""
    return names[0].lstrip("-").replace("-", "_")


def override_key(override: str) -> str:
    """The key an override sets (`+trainer.x=1`, `~trainer.x`: trainer.x)."""
    return override.split("=", 1)[0].lstrip("+~")


def _known_flag(arg: str) -> bool:
    name = arg.split("=", 1)[0]
    return any(name in names for names, _, _ in HYDRA_FLAGS)


def hydra_argv(ns: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The command line handed to Hydra: the parsed flags first, then the overrides."""
    out: list[str] = []
    for names, kind, _ in HYDRA_FLAGS:
        value = getattr(ns, _dest(names))
        if kind == "flag" and value:
            out.append(names[0])
        elif kind != "flag" and value is not None:
            out += [names[0], value]
    return [*out, *overrides]


def _given(overrides: list[str]) -> dict[str, str]:
    """key -> value of `key=value` overrides (the last of a key wins, as in Hydra)."""
    return {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}


def with_recorded_overrides(ns: argparse.Namespace) -> argparse.Namespace:
    """`vaerun train trainer.resume=true hydra.run.dir=RUN`: the run's own recorded overrides
    (RUN/.hydra/overrides.yaml) go first, so a resume needs no more than those two; any given
    here win (a conflicting one is refused by the resume's config check)."""
    import yaml

    given = _given(ns.overrides)
    if is_multirun(ns) or given.get("trainer.resume", "").lower() != "true" or \
            "hydra.run.dir" not in given:
        return ns
    path = os.path.join(given["hydra.run.dir"].strip("'\""), ".hydra", "overrides.yaml")
    if not os.path.isfile(path):
        return ns
    try:
        with open(path) as f:
            recorded = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}); give the run's overrides "
                        "yourself, or restore the file") from None
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise UserError(f"{path} is not a list of overrides; give the run's overrides yourself, "
                        "or restore the file")
    rest = [o for o in recorded if "=" in o and override_key(o) not in given]
    return argparse.Namespace(**{**vars(ns), "overrides": [*rest, *ns.overrides]})


def resume_command(run_dir: str, overrides: list[str]) -> str:
    """The command that continues this run, overrides quoted for the shell."""
    import shlex

    keep = [o for o in overrides
            if override_key(o) not in ("trainer.resume", "hydra.run.dir")]
    return " ".join(["vaerun train", *map(shlex.quote, keep), "trainer.resume=true",
                     shlex.quote(f"hydra.run.dir={run_dir}")])


def runs_jobs(ns: argparse.Namespace) -> bool:
    return not any(getattr(ns, f, None) for f in SHOW_FLAGS)


def is_multirun(ns: argparse.Namespace) -> bool:
    return bool(ns.multirun) or "hydra.mode=MULTIRUN" in ns.overrides


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job the command would run (one for a single run): Hydra's
    basic sweeper's cartesian product of the discrete sweeps, in its order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not multirun:
        return [overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(explain(e, job=overrides)) from None
    lists = []
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            lists.append([f"{key}={o.get_value_element_as_str()}"])
        elif o.is_discrete_sweep():
            lists.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            raise UserError(f"{o.input_line}: a range or interval sweep needs a sweeper plugin; "
                            "list the values instead, e.g. key=1,2,3")
    return [list(job) for job in itertools.product(*lists)]


@contextlib.contextmanager
def _composer(ns: argparse.Namespace) -> Iterator[None]:
    """Hydra's compose API with the config search path `vaerun train` gets."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    path = ns.config_path or f"pkg://{CONFIG_MODULE}"
    GlobalHydra.instance().clear()
    if path.startswith("pkg://"):
        init = initialize_config_module(path[len("pkg://"):], version_base="1.3",
                                        job_name=CONFIG_NAME)
    else:
        init = initialize_config_dir(os.path.abspath(path), version_base="1.3",
                                     job_name=CONFIG_NAME)
    try:
        with init:
            yield
    finally:
        GlobalHydra.instance().clear()


def with_config_dir(ns: argparse.Namespace, job: list[str]) -> list[str]:
    """--config-dir DIR as Hydra applies it: DIR searched first for configs."""
    if ns.config_dir is None:
        return job
    path = os.path.abspath(ns.config_dir)
    if not os.path.isdir(path):
        raise UserError(f"--config-dir {path} is not a directory")
    return [*job, f"hydra.searchpath=[file://{path}]"] if not any(
        o.startswith("hydra.searchpath=") for o in job) else [
        o.replace("hydra.searchpath=[", f"hydra.searchpath=[file://{path},", 1)
        if o.startswith("hydra.searchpath=") else o for o in job]


def composed_jobs(ns: argparse.Namespace) -> Iterator[DictConfig]:
    """Each job's config, with its `hydra` node, composed as Hydra will compose it."""
    jobs = job_overrides(list(ns.overrides), is_multirun(ns))
    with _composer(ns):
        for job in jobs:
            yield _compose(ns.config_name or CONFIG_NAME, with_config_dir(ns, job))


def _compose(name: str, job: list[str]) -> DictConfig:
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(name, job, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(explain(e, name, job)) from None


def validate(ns: argparse.Namespace) -> list[DictConfig]:
    """Compose and check every job the command line would run, and return their configs;
    raise UserError on the first bad one. A command line that only shows something (--help,
    --cfg ...) is Hydra's alone: no jobs."""
    from vaerun.assemble import checked

    if not runs_jobs(ns):
        return []
    refuse_resolvers(list(ns.overrides))
    jobs = []
    for cfg in composed_jobs(ns):
        refuse_instantiation(OmegaConf.to_container(cfg, resolve=False))
        checked(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        jobs.append(cfg)
    if jobs:
        key = "hydra.sweep.dir" if is_multirun(ns) else "hydra.run.dir"
        path = str(OmegaConf.select(jobs[0], key))
        refuse_place(key, path, run=not is_multirun(ns))
        refuse_unwritable(key, path)
    return jobs


# Folders no run may be written into, or below (the root itself only as a folder of its own)
SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin",
          "/sys", "/usr", "/var")
OWN = ("checkpoints/last.pt", "metrics.json", ".hydra", "train.log")  # a vaerun run holds one


def refuse_place(key: str, path: str, run: bool) -> None:
    """A run directory is new, empty, or a vaerun run; never a file, the root or a system
    folder. A sweep's folder follows the same rule but may hold job folders and reports."""
    here = os.path.abspath(path)
    if here == "/" or any(here == s or here.startswith(s + "/") for s in SYSTEM):
        raise ConfigError(key, path, f"{here} is a system folder; choose a folder of your own, "
                          "e.g. under outputs/")
    if os.path.exists(here) and not os.path.isdir(here):
        raise ConfigError(key, path, f"{here} is a file, not a folder; choose another path")
    if not run or not os.path.isdir(here):
        return
    try:
        names = os.listdir(here)
    except OSError as e:
        raise ConfigError(key, path, f"{here} cannot be read ({e.strerror})") from None
    if names and not any(os.path.exists(os.path.join(here, n)) for n in OWN):
        shown = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(key, path, f"{here} holds files vaerun did not write ({shown}); a run "
                          "directory is new, empty or a vaerun run: choose another folder")


RESOLVER_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")  # Hydra's convention


def refuse_resolvers(overrides: list[str]) -> None:
    """In the command line's values only plain ${key} references: a resolver call (now,
    oc.env, oc.decode, oc.select, oc.create, ...) runs code at composition and stores what
    it returned. Hydra's own ${now:...} and ${hydra:...} are allowed where Hydra names
    folders (RESOLVER_KEYS)."""
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key == "hydra.output_subdir":
            raise ConfigError(key, value, "vaerun writes each run's record (.hydra/) inside "
                              "the run itself; remove this override")
        for name in re.findall(r"\$\{\s*([\w.]+)\s*:", value):
            if key in RESOLVER_KEYS and name in ("now", "hydra"):
                continue
            what = " (environment variables are not read into a run)" if name == "oc.env" else ""
            raise ConfigError(key, value, f"the resolver {name}:{what} is not taken from the "
                              "command line (only ${now:...} in hydra.run.dir and "
                              "hydra.sweep.dir); write the value itself")


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
        if logging_cfg and leaf in ("()", "class") and not LOGGING_CLASS.match(str(value)):
            raise ConfigError(path, value, "logging handlers and formatters must be classes "
                              "of Python's logging module (logging.X or logging.handlers.X)")
        if path in TARGETS[1:] and not str(value).startswith(PLUGINS):
            raise ConfigError(path, value, "must name one of Hydra's plugins (choose it as "
                              "hydra/launcher=joblib, submitit_local, slurm, or basic)")


def explain(e: BaseException, name: str | None = None, job: list[str] | None = None) -> str:
    """Hydra's message for a bad override, made one line that names the key and the fix."""
    msg = one_line(e).split(" Config search path:")[0]
    unknown = re.search(r"Could not override '([^']+)'", msg)
    if unknown:
        return unknown_key(unknown.group(1), name, job or [])
    missing = re.search(r"Could not find '([^/']+)/([^']+)' Available options in '[^']+': (.*)", msg)
    if missing:
        group, choice, options = missing.groups()
        opts = options.split()
        return (f"{group}={choice} is not an option{did_you_mean(choice, opts)}; choose one "
                f"of: {', '.join(opts)}")
    if any(s in msg for s in ("LexerNoViableAlt", "token recognition error", "mismatched input")):
        bad = unparsable(job or [])
        return (f"{bad + ': ' if bad else ''}{msg}: quote values with spaces, '=', or characters "
                "beyond ASCII, e.g. 'hydra.run.dir=\"outputs/runs/σ=1\"'")
    if "Ambiguous value" in msg:
        msg += " (a sweep needs -m: vaerun train -m ...)"
    return msg


def unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot read, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException:
            return o
    return None


def group_options(group: str) -> list[str]:
    """The options of one of vaerun's config groups (conf/GROUP/*.yaml), [] for no group."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


GROUPS = ("dataset", "likelihood", "model", "optimizer", "trainer", "recipe")


def unknown_key(key: str, name: str | None, job: list[str]) -> str:
    """One line for an override of a key the config lacks: the nearest group (with the value
    given, where it is that group's option) or key, and a group's options where it has several."""
    value = next((o.split("=", 1)[1] for o in job
                  if override_key(o) == key and "=" in o), "...")
    if "." not in key:
        close = difflib.get_close_matches(key, GROUPS, n=1, cutoff=0.6)
        if close:
            opts = group_options(close[0])
            pick = value if value in opts else "..."
            return (f"{key} is not a config group or key (did you mean {close[0]}={pick}?); "
                    f"{close[0]} options: {', '.join(opts)}")
    group = key.split(".")[0]
    hint = did_you_mean(key, _keys(name, job, key)) if name else ""
    opts = group_options(group)
    pick = (f"; or pick a {group} option that has it ({', '.join(opts)}), e.g. vaerun train "
            f"{group}=... {key}=..." if len(opts) > 1 and not hint else "")
    return (f"{key} is not a key of this config{hint}{pick}; `vaerun train --cfg job` lists "
            "the keys")


def _keys(name: str, job: list[str], bad: str) -> list[str]:
    """Every key of the config `job` composes to, without the override of `bad` (within
    `_composer`)."""
    from hydra import compose

    rest = [o for o in job if override_key(o) != bad]
    try:
        cfg = compose(name, rest, return_hydra_config=True)
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
    if any(override_key(a) == EXCLUDE_KEY for a in overrides):
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
        key = override_key(o)
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


def compared_keys() -> list[str]:
    """The keys this job's command varied (a sweep's swept keys: the rest are in the exclude
    list), the way runs are compared first: HParams' leading columns. A group's choice is
    named as the group (likelihood=gaussian: `likelihood`)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    skip = set(hc.job.config.override_dirname.exclude_keys or [])
    keys = [override_key(o) for o in hc.overrides.task if "=" in o]
    return [k for k in dict.fromkeys(keys) if k not in skip and not k.startswith("hydra")]


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra would have written into the job's .hydra/ (vaerun writes it itself, once
    the run directory has accepted the job: a refused command must not relabel a run)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.instance().cfg
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg),
            ".hydra/hydra.yaml": OmegaConf.to_yaml(hc),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hc.hydra.overrides.task)}
