"""`vaerun train|eval|report`: one command line for the whole flow.

`train` is a Hydra app (configs in the package, pkg://vaerun.conf). Before Hydra starts, every
job of the command (each point of a sweep) is composed and validated, so a typo or a bad value
stops with one `error:` line and exit status 2 before any training.

This is the only module that reads argv, prints `error:` lines and turns exceptions into exit
statuses. Its imports of vaerun's stages (and so of torch) sit inside the functions, on purpose:
`vaerun --help` and a refused command answer without loading torch.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

USAGE = """usage: vaerun <command> [key=value ...]

commands:
  train    train a VAE (a Hydra app: `vaerun train --help` lists the config groups)
             vaerun train likelihood=gaussian likelihood.sigma=0.1
             vaerun train -m likelihood=gaussian likelihood.sigma=0.05,0.1,0.3,1
  eval     evaluate a finished run (IWAE log-likelihood, bits/dim, active units, pictures)
             vaerun eval run_dir=outputs/... eval.iwae_k=5000
  report   tables and plots over a sweep
             vaerun report sweep_dir=outputs/multirun/...

Compare runs with: tensorboard --logdir outputs
"""

CONFIG_MODULE = "vaerun.conf"
EXIT_CODES: list[int] = []  # exit status of each job run in this process


def error(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type",
                                                     "Set the environment variable"))]
    return " ".join(lines) if lines else type(e).__name__


EXCLUDE_KEY = "hydra.job.config.override_dirname.exclude_keys"


def always_excluded() -> list[str]:
    """The keys conf/train.yaml always leaves out of job folder names (trainer.resume, ...)."""
    from importlib import resources

    from omegaconf import OmegaConf

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


def job_overrides(args: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job the command would run (one for a single run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    if not multirun:
        return [args]
    batches = BasicSweeper.split_arguments(parsed, None)
    return [job for batch in batches for job in batch]


def validate(args: list[str], multirun: bool) -> None:
    """Compose and check every job's config; raise UserError on the first bad one."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vaerun.assemble import typed
    from vaerun.errors import UserError

    try:
        jobs = job_overrides(args, multirun)
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            for job in jobs:
                typed(compose("train", overrides=job))
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(_explain(e)) from None


def _explain(e: BaseException) -> str:
    """Hydra's message for a bad override, made one line that names the key and the fix."""
    msg = _one_line(e).split(" Config search path:")[0]
    unknown = re.search(r"Could not override '([^']+)'", msg)
    if unknown:
        key = unknown.group(1)
        group = key.split(".")[0]
        return (f"{key} is not a key of this config (check the spelling, or pick a {group} "
                f"option that has it, e.g. vaerun train {group}=... {key}=...; "
                f"`vaerun train --cfg job` lists the keys)")
    missing = re.search(r"Could not find '([^/']+)/([^']+)' Available options in '[^']+': (.*)", msg)
    if missing:
        group, name, options = missing.groups()
        return f"{group}={name} is not an option; choose one of: {', '.join(options.split())}"
    if "Ambiguous value" in msg:
        msg += " (a sweep needs -m: vaerun train -m ...)"
    return msg


def _log_to_file(log: logging.Logger, msg: str) -> None:
    """Record an error in the run's log file only: the console gets the one `error:` line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _train_task(cfg) -> int:
    from hydra.core.hydra_config import HydraConfig

    from vaerun.assemble import typed
    from vaerun.errors import Interrupted, NonFiniteError, UserError
    from vaerun.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log = logging.getLogger("vaerun")
    try:
        train(typed(cfg), run_dir)
        code = 0
    except (UserError, NonFiniteError) as e:
        _log_to_file(log, str(e))
        code = error(str(e), e.exit_code)
    except Interrupted as e:
        log.warning("interrupted: checkpoint written to %s; continue with trainer.resume=true "
                    "hydra.run.dir=%s", run_dir, run_dir)
        EXIT_CODES.append(e.exit_code)
        raise SystemExit(e.exit_code) from None
    EXIT_CODES.append(code)
    return code


def train_main(args: list[str]) -> int:
    import hydra

    from vaerun.errors import UserError

    flags = [a for a in args if a.startswith("-")]
    multirun = any(a in ("-m", "--multirun") for a in args)
    # With Hydra's other flags (--help, --cfg job, -cp DIR, ...) Hydra alone reads the line.
    if all(f in ("-m", "--multirun") for f in flags):
        try:
            validate([a for a in args if not a.startswith("-")], multirun)
        except UserError as e:
            return error(str(e))
        if multirun:
            args = name_by_swept_keys(args)
    app = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="train",
                     version_base="1.3")(_train_task)
    EXIT_CODES.clear()
    saved = sys.argv
    sys.argv = ["vaerun train", *args]
    try:
        app()
    finally:
        sys.argv = saved
    return max(EXIT_CODES, default=0)


def key_values(args: list[str], usage: str) -> dict[str, str]:
    """`key=value` arguments as a dict; anything else is a UserError showing `usage`."""
    from vaerun.errors import UserError

    bad = [a for a in args if "=" not in a]
    if bad:
        raise UserError(f"{bad[0]!r} is not key=value; usage: {usage}")
    return dict(a.split("=", 1) for a in args)


EVAL_USAGE = "vaerun eval run_dir=PATH [eval.iwae_k=K] [trainer.device=cpu]"


def eval_main(args: list[str]) -> int:
    """`vaerun eval run_dir=PATH [eval.iwae_k=K] [eval.batch_size=N] [trainer.device=...]`."""
    from vaerun.errors import UserError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s",
                        stream=sys.stdout)
    try:
        pairs = key_values(args, EVAL_USAGE)
        if not pairs.get("run_dir"):
            raise UserError(f"run_dir is required: {EVAL_USAGE}")
        run_dir = Path(pairs.pop("run_dir"))
        if not run_dir.is_dir():
            raise UserError(f"run_dir={run_dir} is not a directory; give a run directory "
                            "made by vaerun train")
        metrics = _evaluate(run_dir, pairs)
    except UserError as e:
        return error(str(e))
    for k, v in metrics.items():
        print(f"test/{k} = {v:.6g}")
    print(f"merged into {run_dir / 'metrics.json'} and its TensorBoard events")
    return 0


def _evaluate(run_dir: Path, overrides: dict[str, str]) -> dict[str, float]:
    from vaerun.assemble import load_run
    from vaerun.evaluate import evaluate_run
    from vaerun.logs import RunLog

    cfg, data, vae, state = load_run(run_dir, overrides)
    runlog = RunLog(run_dir)
    try:
        return evaluate_run(vae, data, cfg, runlog, state["step"])
    finally:
        runlog.close()


REPORT_USAGE = "vaerun report sweep_dir=PATH"


def report_main(args: list[str]) -> int:
    """`vaerun report sweep_dir=PATH`."""
    from vaerun.errors import UserError
    from vaerun.report import report

    try:
        pairs = key_values(args, REPORT_USAGE)
        extra = [k for k in pairs if k != "sweep_dir"]
        if extra:
            raise UserError(f"unexpected argument {extra[0]!r}; usage: {REPORT_USAGE}")
        if not pairs.get("sweep_dir"):
            raise UserError(f"sweep_dir is required: {REPORT_USAGE}")
        paths = report(Path(pairs["sweep_dir"]))
    except UserError as e:
        return error(str(e))
    for p in paths:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        from vaerun import __version__

        print(f"vaerun {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "eval":
        return eval_main(rest)
    if command == "report":
        return report_main(rest)
    return error(f"unknown command {command!r}; choose train, eval or report (vaerun --help)")
