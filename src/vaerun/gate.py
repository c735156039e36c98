"""The gate of `vaerun train`: what the user's input may set is checked here, before Hydra does
anything with a job (it configures its logging while composing, then makes each job's folder,
configures its log file and writes `.hydra/` before any callback or task runs).

Flags: only those of FLAGS. Overrides, read with Hydra's override parser: of `hydra.*` only the
run and sweep folders, the searchpath and the launcher (`allow`); no resolver (`refuse_resolver`).
A run resumed with its folder alone gets its recorded overrides, checked the same way. Every job
(each point of a sweep) is composed once with the Compose API: its `hydra` node may differ from
vaerun's own only where `allow` says, whatever set it (command line, a yaml of -cd or
hydra.searchpath, a record); the rest typed and checked. Every job's folder is resolved, named
where the user did not name it, and checked. Then Hydra runs the jobs as planned (`Plan.argv`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import inspect
import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaerun.config import PATHS, did_you_mean, flat, free_keys
from vaerun.errors import ConfigError, Refused, UserError
from vaerun.rundir import RunDir

CONFIG_MODULE, CONFIG_NAME = "vaerun.conf", "train"
FLAGS = {"-m": "multirun", "--multirun": "multirun", "--cfg": ("job", "hydra", "all"),
         "-c": ("job", "hydra", "all"), "--resolve": "resolve", "-cn": (), "--config-name": (),
         "-cd": (), "--config-dir": (), "-p": (), "--package": (), "-h": "help", "--help": "help",
         "--hydra-help": "help",
         "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")}
SHOWS = ("--help", "--cfg", "--info")  # the flags (as read_args names them) that run no job
NAMES = {"-c": "--cfg", "-cn": "--config-name", "-cd": "--config-dir", "-m": "--multirun",
         "-p": "--package"}
YOURS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.searchpath", "hydra.launcher")
THREADS = {"hydra.launcher.backend": "threading", "hydra.launcher.prefer": "threads",
           "hydra.launcher.require": "sharedmem"}  # joblib's ways to run jobs as threads
COMPUTED = ("hydra.runtime", "hydra.overrides", "hydra.job.override_dirname")
PLAIN, NOW = re.compile(r"\$\{[\w.\[\]-]+\}"), re.compile(r"\$\{now:[^${}]*\}")
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys"
LEAST = {"timeout_min": 0, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 0,
         "gpus_per_node": 0, "cpus_per_gpu": 1, "gpus_per_task": 0, "array_parallelism": 1,
         "signal_delay_s": 0, "max_num_timeout": 0, "verbose": 0}  # the launchers' counts
# (on SLURM timeout_min=0 is no time limit, mem_gb=0 all of a node's memory)
DEFAULT_RUN_DIR = "outputs/runs/${now:%Y-%m-%d_%H-%M-%S-%f}"  # conf/train.yaml's: vaerun names it
DEFAULT_SWEEP_DIR = "outputs/multirun/${now:%Y-%m-%d_%H-%M-%S-%f}"


def short(name: str, most: int = 200) -> str:
    """A folder name within `most` bytes (file systems take 255): cut, with a hash of it all."""
    data = name.replace("/", "_").encode()
    cut = data[:most - 9].decode(errors="ignore") + "~" + hashlib.sha1(data).hexdigest()[:8]
    return data.decode() if len(data) <= most else cut


OmegaConf.register_new_resolver("vaerun.short", short, replace=True)  # conf/train.yaml's subdir


def hydra_quoted(value: str) -> str:
    """A value in Hydra's grammar, whatever it holds (`=`, `,`, spaces, quotes, non-ASCII)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


@dataclass
class Job:
    cfg: Any  # the typed, checked RunConfig
    folder: RunDir
    new: bool  # the folder did not exist (or was empty) when the command was checked


@dataclass
class Plan:
    flags: dict[str, Any]
    argv: list[str]  # Hydra's command line: the flags, the overrides, the folders pinned
    configs: list[Any]  # each job's RunConfig
    jobs: list[Job] = field(default_factory=list)
    sweep: RunDir | None = None

    @property
    def shows(self) -> bool:  # Hydra only shows something (help, a config): no job runs
        return any(k in self.flags for k in SHOWS)


def read_args(args: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The flags (FLAGS only: `--name` -> value or True), their words, and the overrides."""
    flags, words, overrides, rest = {}, [], [], list(args)
    while rest:
        a = rest.pop(0)
        name, eq, value = a.partition("=")
        kind = FLAGS.get(name, "override" if not a.startswith("-") else None)
        if kind == "override":
            overrides.append(a)
            continue
        if kind is None:
            raise UserError(f"{name} is not a flag vaerun passes to Hydra (only "
                            f"{', '.join(FLAGS)}); remove it")
        if isinstance(kind, tuple) and not eq:
            value = rest.pop(0) if rest and not rest[0].startswith("-") and (
                not kind or rest[0] in kind) else kind[0] if \
                name == "--info" else None
        takes = "no value" if isinstance(kind, str) else f"one of {', '.join(kind)}" if kind \
            else "a value"
        if (isinstance(kind, str) and eq) or (isinstance(kind, tuple) and (
                value is None or (kind and value not in kind))):
            raise UserError(f"{a}: {name} takes {takes}")
        flags[NAMES.get(name, "--help" if kind == "help" else name)] = value or True
        words += [name] if isinstance(kind, str) else [name, value]
    if len(modes := [f for f in ("--multirun", "--cfg", "--info", "--help") if f in flags]) > 1:
        raise UserError(f"{' and '.join(modes)} together: choose one")
    if bad := [f for f in ("--resolve", "--package") if f in flags and "--cfg" not in flags]:
        raise UserError(f"{bad[0]} goes with --cfg")
    return flags, words, overrides


def utf8(key: str, value: str) -> None:
    """No bytes that are no UTF-8 in a value (argv holds them as surrogates): the run's records
    are UTF-8 yaml, so what holds them could not be recorded whole."""
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in value):
        raise ConfigError(key, value, "bytes that are no UTF-8 (an old archive's Latin-1?) cannot "
                          "be recorded in the run's yaml; rename it, or give a link to it whose "
                          "name is UTF-8")


def allow(key: str, value: Any) -> None:
    """Of Hydra's own keys, the user may set only YOURS (the launcher's, but not its targets;
    a search path of folders only: pkg:// and structured:// import a module)."""
    paths = value if isinstance(value, list) else [] if value is None else [value]
    if key.startswith("hydra.searchpath") and not all(
            isinstance(v, str) and v.startswith("file://") for v in paths):
        raise ConfigError(key, value, "a search path is folders, each file://PATH (pkg:// and "
                          "structured:// import a module; -cd DIR adds a folder)")
    if key.startswith("hydra.searchpath") and (gone := [v for v in paths if "${" not in v and not
                                                         os.path.isdir(os.path.expanduser(v[7:]))]):
        raise ConfigError(key, value, f"{gone[0][7:]} is not a folder: give the folder of your "
                          "configs")
    if THREADS.get(key) == str(value).strip("'\""):
        raise ConfigError(key, value, "it runs a sweep's jobs as threads of one process, which "
                          "would share torch's settings and random streams; leave it out "
                          "(joblib's default runs each job in a process of its own)")
    if not key.startswith("hydra") or key == "hydra/launcher" or any(
            key == k or key.startswith((k + ".", k + "[")) for k in YOURS) and "._" not in key:
        return
    swept = key.removeprefix("hydra.sweeper.params.")
    hint = " (a sweep is -m)" if key == "hydra.mode" else "" if swept == key else \
        f" (a sweep's values go on the command line: vaerun train -m {swept}={value})"
    raise ConfigError(key, value, f"one of Hydra's own settings, which vaerun makes{hint}; of "
                      "hydra.* only hydra.run.dir, hydra.sweep.dir, hydra.searchpath and the "
                      "launcher (hydra/launcher=..., hydra.launcher.*) are yours: remove it")


def refuse_resolver(key: str, value: Any) -> None:
    """No interpolation but a plain ${key} (and ${now:...} in hydra.run.dir, hydra.sweep.dir):
    a resolver runs code as the config is read and stores what it returned, however spelled."""
    rest = PLAIN.sub("", value) if isinstance(value, str) else ""
    rest = NOW.sub("", rest) if key in ("hydra.run.dir", "hydra.sweep.dir") else rest
    if "${" in rest:
        name = re.match(r"\$\{\s*([^:}]*)", rest[rest.index("${"):]).group(1)
        env = " (environment variables are not read into a run)" if "env" in name else ""
        raise ConfigError(key, value, f"the resolver {name}:{env} is not taken from user input "
                          "(only a plain ${key}, and ${now:...} in hydra.run.dir and "
                          "hydra.sweep.dir); write the value itself")


def parse(overrides: list[str], multirun: bool, users: bool = True) -> list[Any]:
    """Each override read with Hydra's parser and, if the user's, allowed; one line for the
    first that is not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), []
    for o in overrides:
        key, value = o.split("=", 1)[0].lstrip("+~"), o.split("=", 1)[-1]
        if "=" in o and (value == "~" or value.startswith("~/")):  # a path from home, left as
            o = f"{o.split('=', 1)[0]}={hydra_quoted(value)}"  # is by the shell: quoted, since
            #                                                    Hydra's grammar has no ~ in a value
        if any(ord(c) < 32 or ord(c) == 127 for c in o):
            raise ConfigError(key, value, "a value with a control character (a newline?) is not "
                              "taken; write it on one line")
        utf8(key, value)
        if digits := re.search(r"\d{31,}", o):
            raise ConfigError(key, f"<{len(digits.group())} digits>", "numbers are read up to "
                              "30 digits; write a large one as 1e40")
        try:
            p = parser.parse_override(o)
        except HydraException as e:
            raise UserError(f"{o}: {one_line(e)}: quote values with spaces, '=', or characters "
                            "beyond ASCII, e.g. 'hydra.run.dir=\"outputs/runs/σ=1\"'") from None
        if users:
            allow(key, p.value() if key.startswith("hydra.searchpath") else value)
            refuse_resolver(key, value)
        if p.is_sweep_override() and not (multirun and p.is_discrete_sweep()):
            raise UserError(f"{o} holds several values, a sweep: vaerun train -m runs one, "
                            "listing the values (key=1,2,3)" if not multirun else
                            f"{o}: a range or interval sweep needs a sweeper; list the values")
        if isinstance(p.value(), Glob):  # (Hydra's needs its config loader, which the gate's lacks)
            raise UserError(f"{o}: list the options to sweep, e.g. {key}=gaussian,laplace "
                            "(vaerun train --help lists each group's)")
        if getattr(p.value(), "shuffle", False):
            raise UserError(f"{o}: shuffle runs a sweep's jobs in a random order, and a sweep "
                            "resumes in the order it began with; list the values in one order")
        out.append(p)
    return out


def absolute(p: Any, multirun: bool) -> Any:
    """A relative folder or file given for a key of PATHS or hydra.searchpath, made absolute
    from the working directory: the run's records then name what it read, and `vaerun eval`,
    `vaerun.load` or a resume from another folder (a notebook's) find it."""
    values = list(p.sweep_string_iterator()) if p.is_sweep_override() else [p.value()]
    if p.key_or_group == "hydra.searchpath" and isinstance(p.value(), list):  # file://PATH each
        made = [f"file://{os.path.abspath(v[7:])}" if str(v).startswith("file://") and "${" not in
                v and not v[7:].startswith(("/", "~")) else v for v in p.value()]
        return p if made == p.value() else parse(
            [f"hydra.searchpath=[{','.join(hydra_quoted(str(v)) for v in made)}]"], multirun,
            False)[0]
    if p.key_or_group not in PATHS or p.is_delete() or not all(
            isinstance(v, str) and v for v in values):
        return p
    made = [v if v.startswith(("/", "~")) or "${" in v else os.path.abspath(v) for v in values]
    text = [v if re.fullmatch(r"[\w./-]+", v, re.ASCII) else hydra_quoted(v) for v in made]
    return p if made == values else parse([f"{p.get_key_element()}={','.join(text)}"],
                                          multirun, False)[0]


def pinned(jobs: list[DictConfig], given: set[str], multirun: bool) -> list[str]:
    """A relative folder or file that a yaml of yours gives for a key of PATHS, the same in
    every job: made absolute in each job (`check_job`'s: no resolver), and its override for
    Hydra's (not in the folders' names), so the records name what the run read, as for one
    given on the command line. (One that differs between the jobs of a sweep is left.)"""
    pins = []
    for key in PATHS:  # (an interpolation that fails is named as the job is typed)
        values = {repr(OmegaConf.select(c, key, default=None, throw_on_resolution_failure=False))
                  for c in jobs}
        value = OmegaConf.select(jobs[0], key, default=None, throw_on_resolution_failure=False)
        if key in given or len(values) > 1 or not isinstance(value, str) or not value or \
                value.startswith(("/", "~")):
            continue
        p = absolute(parse([f"{key}={hydra_quoted(value)}"], multirun, False)[0], multirun)
        for c in jobs:
            OmegaConf.update(c, key, p.value())
        pins.append(p.input_line)
    return pins


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(
        ("full_key:", "object_type", "Set the environment variable", "See https"))]
    return " ".join(lines).split(" Config search path:")[0] or type(e).__name__


@contextlib.contextmanager
def composer():
    """Hydra's Compose API on vaerun's configs; its config loader (for group options)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (${now:...}) for the folders' names
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name=CONFIG_NAME):
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()


def compose(name: str, job: list[str], loader: Any) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return hydra_compose(name, job, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: group=null
        raise ConfigError(*diagnose(name, job, loader, e)) from None


def diagnose(name: str, job: list[str], loader: Any, e: BaseException) -> tuple:
    """One line for a job Hydra could not compose: an option a group lacks, a key the config
    lacks (the nearest, from the config composed without the keys, on this path only), else
    Hydra's own message."""
    from hydra import compose as hydra_compose

    groups = [g for g in loader.list_groups("") if g != "hydra"] + ["hydra/launcher"]
    parsed = parse(job, False, False)
    search = [o for o, p in zip(job, parsed, strict=True) if p.key_or_group == "hydra.searchpath"]
    folders = [str(f)[len("file://"):] for p in parsed if p.key_or_group == "hydra.searchpath"
               for f in (p.value() if isinstance(p.value(), list) else [p.value()])]  # file:// only

    def keys_of(overrides: list[str]) -> dict[str, Any]:  # the config they compose, flat
        return flat(OmegaConf.to_container(hydra_compose(name, [*search, *overrides])))

    def options(group: str) -> list[str]:  # vaerun's, and those of the folders of yours
        yours = [f.stem for d in folders for f in sorted(Path(d, group).glob("*.yaml"))]
        return list(dict.fromkeys([*loader.get_group_options(group), *yours]))

    for p in parsed:
        key, value, close = p.key_or_group, str(p.value()), difflib.get_close_matches(
            p.key_or_group, loader.list_groups(""), n=1, cutoff=0.6)
        if key in groups and p.is_add():
            return key, None, "", (f"{p.input_line}: the config has {key} already (+ adds what "
                                   f"it lacks); choose the option without +: {key}={value}")
        if key in groups and value not in (opts := options(key)):
            return key, None, "", (f"{key}={value} is not an option{did_you_mean(value, opts)}; "
                                   f"choose one of: {', '.join(opts)}")
        if key not in groups and "." not in key and close:
            opts = loader.get_group_options(close[0])
            return key, None, "", (f"{key} is not a config group or key (did you mean {close[0]}="
                                   f"{value if value in opts else '...'}?); {close[0]} options: "
                                   f"{', '.join(opts)}")
    with contextlib.suppress(Exception):
        got = keys_of([o for o, p in zip(job, parsed, strict=True) if p.key_or_group in groups])
        keys = list(got)
        for p in parsed:
            key, group = p.key_or_group, p.key_or_group.split(".")[0]
            if p.is_delete() or p.is_add() or p.is_force_add() or key in groups or \
                    key.startswith("hydra.") or any(k == key or k.startswith(key + ".") for k in keys):
                continue
            parent, _, leaf = key.rpartition(".")
            if parent == "optimizer" and leaf != "params":  # a keyword its yaml leaves out
                from vaerun.optim import optimizer_class

                cls = optimizer_class({"_target_": got.get("optimizer._target_")})
                if leaf in inspect.signature(cls).parameters:
                    return key, None, "", (f"{key} is a parameter of {cls.__name__} that its yaml "
                                           f"leaves at torch's default: add it, +{p.input_line}")
            opts = [o for o in (options(group) if group in groups else [])
                    if key in keys_of([f"{group}={o}"])]
            near = [k for k in keys if k.rpartition(".")[0] == parent]  # its siblings' names
            close = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in near], 1, 0.6)
            hint = (f"; pick a {group} option that has it ({', '.join(opts)}), e.g. vaerun train "
                    f"{group}={opts[0]} {key}=..." if opts else f" (did you mean "
                    f"{parent + '.' if parent else ''}{close[0]}?)" if close else ""
                    if near else did_you_mean(key, keys))
            return key, None, "", (f"{key} is not a key of this config{hint}; `vaerun train "
                                   "--cfg job` lists the keys")
    return "config", None, "", one_line(e)


def check_job(cfg: DictConfig, base: dict[str, Any] | None) -> DictConfig:
    """A composed job's `hydra` node against vaerun's own (`base`; None where no yaml of the
    user's is on the search path), its interpolations and targets; its vaerun part, with
    interpolations kept (they resolve within it)."""
    mine = flat(OmegaConf.to_container(cfg.hydra, resolve=False), "hydra") if base else {}
    for key in [*sorted(mine), *sorted(set(base or {}) - set(mine))]:  # what was set, first
        if not key.startswith(COMPUTED) and mine.get(key, ...) != base.get(key, ...):
            allow(key, mine.get(key, "<deleted>"))
            refuse_resolver(key, mine.get(key))
    for name, least in {"n_jobs": None, **LEAST}.items():  # else a traceback as the sweep began
        value = OmegaConf.select(cfg, f"hydra.launcher.{name}", default=None)
        if isinstance(value, (int, float)) and (value == 0 if least is None else value < least):
            raise ConfigError(f"hydra.launcher.{name}", value, "joblib's processes: -1 is one per "
                              "core, never 0" if least is None else f"must be at least {least}")
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra")
    for key, value in flat(raw).items():
        if key.rsplit(".", 1)[-1] == "_target_" and key != "optimizer._target_":
            raise ConfigError(key, value, "vaerun instantiates nothing from a config but "
                              "torch.optim optimizers (optimizer._target_); remove it")
        refuse_resolver(key, value)
    return OmegaConf.create(raw)


def with_record(parsed: list[Any], flags: dict[str, Any], named: str | None) -> list[str]:
    """`vaerun train trainer.resume=true hydra.run.dir=RUN`: the run's recorded overrides
    (RUN/.hydra/overrides.yaml) that those given do not set, to go first, and the folders of
    configs it was composed with (-cd, hydra.searchpath: Hydra's record) unless given."""
    given = {p.key_or_group: p.value() for p in parsed}
    if "--multirun" in flags or given.get("trainer.resume") is not True or \
            "hydra.run.dir" not in given:
        return []
    rd = RunDir(str(given["hydra.run.dir"]))
    if rd.kind() != "run":  # no run of vaerun's: refused (or new) as its folder is checked
        return []
    rd.check_links(named or "hydra.run.dir")  # its records are read through no link
    found = [] if "hydra.searchpath" in given or "--config-dir" in flags else rd.searchpath()
    if gone := [f for f in found if f.startswith("file://") and not os.path.isdir(f[7:])]:
        raise UserError(f"the run in {rd} was composed with the configs in {gone[0][7:]} (its "
                        f"{rd.HYDRA} says), which is not a folder now: restore it, or give where "
                        "they are now with -cd DIR")
    return [o for o in rd.overrides() if o.split("=", 1)[0].lstrip("+~") not in given] + [
        f"hydra.searchpath=[{','.join(hydra_quoted(str(f)) for f in found)}]"] * bool(found)


def plan(args: list[str], named: str | None = None, poll: Any = lambda: None) -> Plan:
    """Check the command line of `vaerun train` and every job it asks for: the Plan, or a
    UserError (ConfigError, Refused) for the first thing wrong (`named`: the run's folder as a
    caller named it, for hydra.run.dir, in those lines; `poll`: called between jobs, raises
    to stop: a sweep of many jobs takes seconds to check)."""
    from vaerun.assemble import checked

    flags, words, given = read_args(args)
    multirun = "--multirun" in flags
    parsed = parse(with_record(parse(given, multirun), flags, named) + given, multirun)
    last = {p.get_key_element(): p for p in parsed}  # the last of a key wins: Hydra's rule too
    parsed = [absolute(p, multirun) for p in parsed if last[p.get_key_element()] is p]
    keys = free_keys() + ([p.get_key_element() for p in parsed if not p.is_sweep_override()
                           and not p.key_or_group.startswith("hydra")]
                          if any(p.is_sweep_override() for p in parsed) else [])
    own = [p.input_line for p in parsed] + [  # job folders named by what the command varies
        f"{EXCLUDE}=[{','.join(hydra_quoted(k) for k in dict.fromkeys(keys))}]"]
    utf8("--config-dir", flags.get("--config-dir", "."))
    cd = os.path.realpath(flags.get("--config-dir", "."))
    if not os.path.isdir(cd):
        raise UserError(f"--config-dir {cd} is not a directory")
    searched = [f"hydra.searchpath=[{hydra_quoted('file://' + cd)}]"] * ("--config-dir" in flags)
    lists = [[f"{p.get_key_element()}={v}" for v in p.sweep_string_iterator()]  # Hydra's order
             if p.is_sweep_override() else [p.input_line] for p in parse(own, multirun, False)]
    yours = "--config-dir" in flags or any(p.key_or_group == "hydra.searchpath" for p in parsed)
    with composer() as loader:  # vaerun's own hydra node, where a yaml of yours could change it
        base = compose(CONFIG_NAME, [p.input_line for p in parsed if p.key_or_group ==
                                     "hydra/launcher"] + own[-1:], loader) if yours else None
        composed = []
        for job in itertools.product(*lists):
            poll()
            composed.append(compose(flags.get("--config-name", CONFIG_NAME), [*searched, *job],
                                    loader))
    hydra_base = flat(OmegaConf.to_container(base.hydra, resolve=False), "hydra") if yours else {}
    jobs = [check_job(c, hydra_base if yours else None) for c in composed]
    pins = pinned(jobs, {p.key_or_group for p in parsed}, multirun)
    keys += [p.split("=", 1)[0] for p in pins]  # pinned, not in the folders' names
    own[-1:] = [*pins, f"{EXCLUDE}=[{','.join(hydra_quoted(k) for k in dict.fromkeys(keys))}]"]
    out = Plan(flags, [*words, *own], [checked(job) for job in jobs])
    return out if out.shows else place(out, composed, named)


def place(out: Plan, composed: list[DictConfig], named: str | None = None) -> Plan:
    """Every job's folder, resolved, named where the user did not name it, and checked."""
    from vaerun.assemble import resume_state

    what = "sweep" if "--multirun" in out.flags else "run"
    given, mine = f"hydra.{what}.dir", composed[0].hydra[what]
    key = named if named and what == "run" else given
    if any(c.trainer.resume for c in out.configs) and OmegaConf.to_container(mine)["dir"] == (
            DEFAULT_RUN_DIR if what == "run" else DEFAULT_SWEEP_DIR):  # a new folder: no resume
        fix = f"{key}=" + ("RUN" if what == "run" else "outputs/multirun/NAME")
        raise ConfigError("trainer.resume", True, "", f"trainer.resume=true continues the {what} "
                          f"in the folder you give ({fix}); without one this command makes a new "
                          "folder")
    if what == "run" and OmegaConf.to_container(mine)["dir"] == DEFAULT_RUN_DIR:
        stem = where = f"outputs/runs/{datetime.now():%m%d-%H%M%S}_" + short(
            composed[0].hydra.job.override_dirname or "default")  # a time, then what changed
        for n in itertools.count(2):
            if not os.path.exists(where):
                break
            where = f"{stem}-{n}"
    else:
        try:
            where = str(mine.dir)
        except Exception as e:  # noqa: BLE001 (OmegaConf's resolution errors)
            raise ConfigError(key, OmegaConf.to_container(mine)["dir"], one_line(e)) from None
    if not where.strip():  # realpath("") is the working directory
        raise ConfigError(key, where, "give a folder, e.g. outputs/" + (
            "runs/NAME" if what == "run" else "multirun/NAME"))
    top = RunDir(where)
    top.check_place(key, what)
    out.argv = [a for a in out.argv if not a.startswith(given + "=")] + [
        f"{given}={hydra_quoted(str(top.path))}"]
    out.sweep = top if what == "sweep" else None
    names = [short(c.hydra.job.override_dirname) for c in composed]
    held = {} if not out.sweep or not top.path.is_dir() else {  # name -> the job folder it has
        p.name.partition("_")[2]: p.name for p in top.path.iterdir() if p.name.partition("_")[
            0].isdecimal() and RunDir(p).kind() == "run"}
    seen: dict[str, int] = {}  # each job's config -> its first job
    for i, (name, rc) in enumerate(zip(names, out.configs, strict=True)):
        twin = seen.setdefault(repr(dataclasses.replace(rc, plain={})), i)  # typed: 1 == 1.0
        if twin < i and rc.trainer.seed is not None:  # (seed null: each draws its own)
            raise UserError(f"jobs {twin} and {i} of the sweep are the same run ({names[twin]} "
                            f"and {name}): list each value once")
        rd = RunDir(top.path / f"{i}_{name}") if out.sweep else top
        rd.check_place(f"{key} (job {i})" if out.sweep else key, "run")
        new = not rd.path.exists() or not any(rd.path.iterdir())
        if out.sweep and new and held.get(name, rd.path.name) != rd.path.name:
            raise Refused(f"job {i} ({name}) of this sweep is job {held[name].partition('_')[0]} "
                          f"of the sweep in {top} ({held[name]}): a sweep resumes with its values "
                          "in the order it began with; add new values at the end of each list, "
                          "or choose another hydra.sweep.dir")
        rd.check_free()
        if resume_state(rc, rd, key) is not None:
            rd.metrics()  # its record, read back on resume: refused here, before Hydra writes
        out.jobs.append(Job(rc, rd, new))
    return out


def resume_command(run_dir: str, overrides: list[str]) -> str:
    """The command that continues a run, as pasted into a shell: each override quoted for the
    shell, the folder for Hydra's grammar too (its name holds `=` and `,`)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("trainer.resume",
                                                                             "hydra.run.dir")]
    return " ".join(["vaerun train", *map(shlex.quote, keep), "trainer.resume=true",
                     shlex.quote(f"hydra.run.dir={hydra_quoted(run_dir)}")])
