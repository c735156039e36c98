"""The gate of `vaerun train`: what the user's input may set is checked here, before Hydra does
anything with a job (Hydra configures its own logging while it composes, and creates each job's
folder, configures its log file and writes `.hydra/` before any callback or task runs).

1. Flags: only Hydra's flags that vaerun passes on (FLAGS); any other is refused.
2. Overrides, read with Hydra's override parser: of `hydra.*` only the run and sweep folders,
   the searchpath and the launcher (`allow`). A run resumed with its folder alone gets its
   recorded overrides first, read and checked the same way.
3. Every job of the command (each point of a sweep) composed once with the Compose API: its
   `hydra` node may differ from vaerun's own only where `allow` says, whatever set it (the
   command line, a yaml of -cd or hydra.searchpath, a record); no interpolation but a plain
   ${key} (and Hydra's ${now:...} in the two folders); no `_target_` but the optimizer's; the
   rest typed and checked (vaerun.assemble.checked).
4. Every job's folder resolved, named where the user did not name it, and checked
   (vaerun.rundir), so that a typo in job 7 or a folder in use stops the command before job 1.
Then Hydra runs the jobs as planned (`Plan.argv`: the same overrides, the folders pinned).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaerun.config import did_you_mean, free_keys
from vaerun.errors import ConfigError, UserError
from vaerun.rundir import RunDir

CONFIG_MODULE, CONFIG_NAME = "vaerun.conf", "train"
INFO = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
FLAGS = {  # Hydra's flags that vaerun passes on: flag -> (name, None: a switch | its values)
    **dict.fromkeys(("-m", "--multirun"), ("multirun", None)),
    **dict.fromkeys(("-r", "--run"), ("run", None)),
    **dict.fromkeys(("-c", "--cfg"), ("cfg", ("job", "hydra", "all"))),
    "--resolve": ("resolve", None), **dict.fromkeys(("-p", "--package"), ("package", ())),
    **dict.fromkeys(("-cn", "--config-name"), ("config_name", ())),
    **dict.fromkeys(("-cd", "--config-dir"), ("config_dir", ())),
    **dict.fromkeys(("-h", "--help"), ("help", None)), "--hydra-help": ("hydra_help", None),
    **dict.fromkeys(("-i", "--info"), ("info", INFO))}
YOURS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.searchpath", "hydra.launcher")
COMPUTED = ("hydra.runtime", "hydra.overrides", "hydra.job.override_dirname")
PLAIN = re.compile(r"\$\{[\w.\[\]-]+\}")  # a reference to another key: no resolver
NOW = re.compile(r"\$\{now:[^${}]*\}")
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys"
MAX_NAME = 200  # bytes of a folder name vaerun makes (file systems take 255)


def short(name: str) -> str:
    """A folder name within MAX_NAME bytes: cut, with a hash of the whole where it was cut."""
    data = name.replace("/", "_").encode()
    if len(data) <= MAX_NAME:
        return data.decode()
    return data[:MAX_NAME - 9].decode(errors="ignore") + "~" + hashlib.sha1(data).hexdigest()[:8]


OmegaConf.register_new_resolver("vaerun.short", short, replace=True)  # conf/train.yaml's subdir


def hydra_quoted(value: str) -> str:
    """A value in Hydra's grammar, whatever it holds (`=`, spaces, quotes, non-ASCII)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


@dataclass
class Job:
    overrides: list[str]
    cfg: Any  # the typed, checked RunConfig
    folder: RunDir
    new: bool  # the folder did not exist (or was empty) when the command was checked


@dataclass
class Plan:
    flags: dict[str, Any]
    argv: list[str]  # Hydra's command line: the flags, the overrides, the folders pinned
    jobs: list[Job] = field(default_factory=list)
    sweep: RunDir | None = None
    configs: list[Any] = field(default_factory=list)  # each job's RunConfig

    @property
    def shows(self) -> bool:  # Hydra only shows something (help, a config): no job runs
        return any(self.flags.get(f) for f in ("help", "hydra_help", "cfg", "info"))


def read_args(args: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The flags (FLAGS only), their words as given, and the overrides."""
    flags: dict[str, Any] = {}
    words, overrides, rest = [], [], list(args)
    while rest:
        a = rest.pop(0)
        if not a.startswith("-"):
            overrides.append(a)
            continue
        name, eq, value = a.partition("=")
        if name not in FLAGS:
            raise UserError(f"{name} is not a flag vaerun passes to Hydra (only "
                            f"{', '.join(sorted(set(FLAGS)))}); remove it")
        dest, choices = FLAGS[name]
        if choices is not None and not eq:
            if dest == "info" and (not rest or rest[0] not in INFO):
                value = "all"
            elif not rest:
                raise UserError(f"{name} needs a value")
            else:
                value = rest.pop(0)
        if (choices is None and eq) or (choices and value not in choices):
            takes = "no value" if choices is None else "one of " + ", ".join(choices)
            raise UserError(f"{a}: {name} takes {takes}")
        flags[dest] = True if choices is None else value
        words += [name] if choices is None else [name, value]
    modes = [f for f in ("multirun", "run", "cfg", "info") if f in flags]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} together: choose one of -m, --run, --cfg, --info")
    if flags.get("resolve") and "cfg" not in flags and not flags.get("help"):
        raise UserError("--resolve goes with --cfg (or --help)")
    return flags, words, overrides


def allow(key: str, value: Any) -> None:
    """Of Hydra's own keys, the user may set only YOURS (the launcher's, but its `_target_`)."""
    if not key.startswith("hydra") or key == "hydra/launcher" or any(
            key == k or key.startswith((k + ".", k + "[")) for k in YOURS) and "._" not in key:
        return
    raise ConfigError(key, value, "one of Hydra's own settings, which vaerun makes"
                      f"{' (a sweep is -m)' if key == 'hydra.mode' else ''}; of hydra.* only "
                      "hydra.run.dir, hydra.sweep.dir, hydra.searchpath and the launcher "
                      "(hydra/launcher=..., hydra.launcher.*) are yours: remove it")


def refuse_resolver(key: str, value: Any) -> None:
    """No interpolation but a plain ${key} (and ${now:...} in hydra.run.dir, hydra.sweep.dir):
    a resolver runs code as the config is read and stores what it returned."""
    if not isinstance(value, str) or "${" not in value:
        return
    rest = PLAIN.sub("", value)
    rest = NOW.sub("", rest) if key in ("hydra.run.dir", "hydra.sweep.dir") else rest
    if "${" in rest:
        name = re.search(r"\$\{\s*([^:}]*)", rest[rest.index("${"):]).group(1)
        env = " (environment variables are not read into a run)" if "env" in name else ""
        raise ConfigError(key, value, f"the resolver {name}:{env} is not taken from user input "
                          "(only a plain ${key}, and ${now:...} in hydra.run.dir and "
                          "hydra.sweep.dir); write the value itself")


def parse(overrides: list[str], multirun: bool, users: bool = True) -> list[Any]:
    """Each override read with Hydra's parser and, if the user's, allowed (`allow`); one line
    for the first that is not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if digits := re.search(r"\d{31,}", o):
            raise ConfigError(key, f"<a number of {len(digits.group())} digits>", "numbers are "
                              "read up to 30 digits; write a large one as 1e40")
        try:
            p = parser.parse_override(o)
        except HydraException as e:
            raise UserError(f"{o}: {one_line(e)}: quote values with spaces, '=', or characters "
                            "beyond ASCII, e.g. 'hydra.run.dir=\"outputs/runs/σ=1\"'") from None
        if users:
            allow(p.key_or_group, o.split("=", 1)[-1])
            refuse_resolver(p.key_or_group, o.split("=", 1)[-1])
        if p.is_sweep_override() and not multirun:
            raise UserError(f"{o} holds several values, a sweep: run it with -m (vaerun train "
                            "-m ...)")
        if p.is_sweep_override() and not p.is_discrete_sweep():
            raise UserError(f"{o}: a range or interval sweep needs a sweeper plugin; list the "
                            "values instead, e.g. key=1,2,3")
        out.append(p)
    return out


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(
        ("full_key:", "object_type", "Set the environment variable", "See https"))]
    return " ".join(lines) or type(e).__name__


def flat(node: Any, path: str) -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in flat(val, f"{path}.{key}").items()}
    if isinstance(node, list):
        return {k: v for i, val in enumerate(node) for k, v in flat(val, f"{path}[{i}]").items()}
    return {path: node}


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
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(diagnose(name, job, loader, e)) from None


def diagnose(name: str, job: list[str], loader: Any, e: BaseException) -> str:
    """One line for a job Hydra could not compose: an option a group lacks, a key the config
    lacks (the nearest, composed on this path only), else Hydra's own message."""
    from hydra import compose as hydra_compose

    groups = [g for g in loader.list_groups("") if g != "hydra"] + ["hydra/launcher"]
    parsed = parse(job, multirun=False, users=False)
    for p in parsed:
        key, value = p.key_or_group, str(p.value())
        if key in groups and value not in (opts := loader.get_group_options(key)):
            return (f"{key}={value} is not an option{did_you_mean(value, opts)}; choose one of: "
                    f"{', '.join(opts)}")
        close = difflib.get_close_matches(key, groups, n=1, cutoff=0.6)
        if key not in groups and "." not in key and close:
            opts = loader.get_group_options(close[0])
            return (f"{key} is not a config group or key (did you mean {close[0]}="
                    f"{value if value in opts else '...'}?); {close[0]} options: {', '.join(opts)}")
    try:
        base = OmegaConf.to_container(hydra_compose(name, [o for o, p in zip(job, parsed, strict=True)
                                                           if p.key_or_group in groups]))
    except Exception:  # noqa: BLE001 (the config without the keys set fails too: Hydra's line)
        return one_line(e).split(" Config search path:")[0]
    keys = list(flat(base, "x"))
    for p in parsed:
        key = p.key_or_group
        if p.is_delete() or p.is_add() or p.is_force_add() or key in groups or \
                f"x.{key}" in keys or any(k.startswith(f"x.{key}.") for k in keys):
            continue
        hint, group = did_you_mean(key, [k[2:] for k in keys]), key.split(".")[0]
        opts = loader.get_group_options(group) if group in groups else []
        pick = (f"; or pick a {group} option that has it ({', '.join(opts)}), e.g. vaerun train "
                f"{group}=... {key}=..." if len(opts) > 1 and not hint else "")
        return f"{key} is not a key of this config{hint}{pick}; `vaerun train --cfg job` lists the keys"
    return one_line(e).split(" Config search path:")[0]


def check_job(cfg: DictConfig, base: dict[str, Any]) -> DictConfig:
    """A composed job's `hydra` node against vaerun's own (`base`), its interpolations and
    targets; its vaerun part, with interpolations kept (they resolve within it)."""
    mine = flat(OmegaConf.to_container(cfg.hydra, resolve=False), "hydra")
    for key in set(mine) | set(base):
        if not key.startswith(COMPUTED) and mine.get(key, ...) != base.get(key, ...):
            allow(key, mine.get(key, "<deleted>"))
            refuse_resolver(key, mine.get(key))
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra")
    for key, value in flat(raw, "").items():
        key = key[1:]
        if key.rsplit(".", 1)[-1] == "_target_" and key != "optimizer._target_":
            raise ConfigError(key, value, "vaerun instantiates nothing from a config but torch.optim "
                              "optimizers (optimizer._target_); remove it")
        refuse_resolver(key, value)
    return OmegaConf.create(raw)


def with_record(parsed: list[Any], multirun: bool) -> list[str]:
    """`vaerun train trainer.resume=true hydra.run.dir=RUN`: the run's recorded overrides
    (RUN/.hydra/overrides.yaml) that those given do not set, to go first."""
    given = {p.key_or_group: p for p in parsed}
    if multirun or "hydra.run.dir" not in given or "trainer.resume" not in given or \
            given["trainer.resume"].value() is not True:
        return []
    recorded = RunDir(str(given["hydra.run.dir"].value())).overrides()
    return [o for o in recorded if o.split("=", 1)[0].lstrip("+~") not in given]


def jobs_of(parsed: list[Any]) -> list[list[str]]:
    """Each job's overrides: the cartesian product of the sweeps, in Hydra's basic sweeper's
    order (a single run: one job)."""
    lists = [[f"{p.get_key_element()}={v}" for v in p.sweep_string_iterator()]
             if p.is_sweep_override() else [p.input_line] for p in parsed]
    return [list(job) for job in itertools.product(*lists)]


def exclude_keys(parsed: list[Any]) -> str:
    """Job folders named by what varies: the keys that never change a result, and in a sweep the
    keys every job sets the same, left out of Hydra's override_dirname."""
    keys = free_keys()
    if any(p.is_sweep_override() for p in parsed):
        keys += [p.get_key_element() for p in parsed
                 if not p.is_sweep_override() and not p.key_or_group.startswith("hydra")]
    return f"{EXCLUDE}=[{','.join(hydra_quoted(k) for k in dict.fromkeys(keys))}]"


def plan(args: list[str]) -> Plan:
    """Check the command line of `vaerun train` and every job it asks for; the Plan, or a
    UserError (ConfigError, Refused) for the first thing wrong."""
    from vaerun.assemble import checked

    flags, words, given = read_args(args)
    multirun = bool(flags.get("multirun"))
    overrides = with_record(parse(given, multirun), multirun) + given
    parsed = parse(overrides, multirun)
    last = {p.get_key_element(): i for i, p in enumerate(parsed)}  # the last of a key wins
    overrides = [o for i, (o, p) in enumerate(zip(overrides, parsed, strict=True))
                 if last[p.get_key_element()] == i]
    parsed = [p for i, p in enumerate(parsed) if last[p.get_key_element()] == i]
    searched = []
    if flags.get("config_dir"):
        cd = os.path.realpath(flags["config_dir"])
        if not os.path.isdir(cd):
            raise UserError(f"--config-dir {cd} is not a directory")
        searched = [f"hydra.searchpath=[{hydra_quoted('file://' + cd)}]"]
    own = [*overrides, exclude_keys(parsed)]
    launcher = [p.input_line for p in parsed if p.key_or_group == "hydra/launcher"][-1:]
    with composer() as loader:
        base = compose(CONFIG_NAME, [*launcher, own[-1]], loader)
        composed = [compose(flags.get("config_name") or CONFIG_NAME, [*searched, *job], loader)
                    for job in jobs_of(parse(own, multirun, users=False))]
    hydra_base = flat(OmegaConf.to_container(base.hydra, resolve=False), "hydra")
    rcs = [checked(check_job(c, hydra_base)) for c in composed]
    if Plan(flags, []).shows:
        return Plan(flags, [*words, *overrides], configs=rcs)
    return place(flags, [*words, *own], composed, rcs, base)


def resolved(cfg: DictConfig, key: str) -> str:
    """A folder key's value, its ${now:...} resolved (once: the plan pins it)."""
    try:
        return str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True))
    except Exception as e:  # noqa: BLE001 (OmegaConf's resolution errors)
        raise ConfigError(key, OmegaConf.select(cfg, key.rsplit(".", 1)[0]), one_line(e)) from None


def place(flags: dict, argv: list[str], composed: list[DictConfig], rcs: list[Any],
          base: DictConfig) -> Plan:
    """Every job's folder, resolved, named where the user did not name it, and checked."""
    from vaerun.assemble import resume_state

    multirun = bool(flags.get("multirun"))
    what, key = ("sweep", "hydra.sweep.dir") if multirun else ("run", "hydra.run.dir")
    mine = OmegaConf.to_container(composed[0].hydra, resolve=False)[what]["dir"]
    if not multirun and mine == OmegaConf.to_container(base.hydra, resolve=False)["run"]["dir"]:
        stem = f"outputs/runs/{datetime.now():%m%d-%H%M%S}_" + short(
            composed[0].hydra.job.override_dirname or "default")  # a time, then what changed
        where, n = stem, 1
        while os.path.exists(where):
            n += 1
            where = f"{stem}-{n}"
    else:
        where = resolved(composed[0], key)
    top = RunDir(where)
    top.check_place(key, what)
    out = Plan(flags, [*[a for a in argv if not a.startswith(key + "=")],
                       f"{key}={hydra_quoted(str(top.path))}"], sweep=top if multirun else None,
               configs=rcs)
    for i, (cfg, rc) in enumerate(zip(composed, rcs, strict=True)):
        folder = RunDir(top.path / f"{i}_{short(cfg.hydra.job.override_dirname)}") if multirun \
            else top
        folder.check_place(f"{key} (job {i})" if multirun else key, "run")
        new = not folder.path.exists() or not any(folder.path.iterdir())
        folder.check_free()
        resume_state(rc, folder)
        out.jobs.append(Job(OmegaConf.to_container(cfg.hydra.overrides.task), rc, folder, new))
    return out


def resume_command(run_dir: str, overrides: list[str]) -> str:
    """The command that continues a run, pasted into a shell as it is: each override quoted for
    the shell, the folder for Hydra's grammar too (its name holds `=` and `,`)."""
    import shlex

    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("trainer.resume",
                                                                             "hydra.run.dir")]
    return " ".join(["vaerun train", *map(shlex.quote, keep), "trainer.resume=true",
                     shlex.quote(f"hydra.run.dir={hydra_quoted(run_dir)}")])
