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
import os
import sys
import threading
import warnings
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
# vaerun's launcher configs (joblib, submitit_local) are complete yaml files that shadow the
# plugins' own: Hydra still validates them against those schemas, and says so, in this process
# and in every worker (which imports this module for the task function)
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")


def error(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _log_to_file(msg: str) -> None:
    """Record an error in the run's log file only: the console gets the one `error:` line."""
    log = logging.getLogger("vaerun")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


RESUME_FIX = ("the last checkpoint and records are whole; free space or make the folder "
              "writable, then resume with trainer.resume=true")


def write_error(e: OSError, fix: str = RESUME_FIX) -> str:
    """An OSError of a write (a full disk, a read-only folder) as one line."""
    name = os.fsdecode(e.filename) if e.filename else ""
    return f"could not write{' ' + name if name else ''}: {e.strerror or e}; {fix}"


def _quiet_thread_write_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's event writer thread dies of a disk error with a traceback; the same error
    reaches the main thread at the next flush, which reports it as one line."""
    if not isinstance(args.exc_value, OSError):
        threading.__excepthook__(args)


class TrainTask:
    """Hydra's task function for `vaerun train`: one job, its exit status recorded in `codes`
    (by this process's launcher, or by vaerun's launchers for jobs run elsewhere), so the
    command exits with the worst. In the `vaerun train` process (the basic launcher) a stop
    signal also ends the sweep; in a submitit job a failure ends the process with its status."""

    def __init__(self, stop):
        self.codes: list[int] = []
        self.stop = stop  # the command's stop requests, for jobs run in this process
        self.pid = os.getpid()
        self.__name__ = self.__qualname__ = "train"
        self.__module__ = __name__

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stop": None, "codes": []}  # a worker installs its own

    def __call__(self, cfg) -> int:
        from hydra.core.hydra_config import HydraConfig

        here = os.getpid() == self.pid
        code = _run_job(cfg, Path(HydraConfig.get().runtime.output_dir),
                        self.stop if here else None)
        if here:
            self.codes.append(code)
            if code > 128:  # a stop signal: no further job
                raise SystemExit(code)
        elif code and os.environ.get("SUBMITIT_EXECUTOR"):  # a job of its own process
            _hand_back_to_scheduler(code)
            raise SystemExit(code)  # SLURM and submitit record a failure only if the process fails
        return code


def _hand_back_to_scheduler(code: int) -> None:
    """A job stopped by a signal has written its checkpoint: now let the scheduler bring it
    back. USR2 (submitit's warning before the time limit): submitit's own handler requeues it
    (and exits). SIGTERM while SLURM still says RUNNING (a preemption's grace time): requeue."""
    import signal

    from vaerun import slurm

    if code == 128 + signal.SIGUSR2 and callable(handler := signal.getsignal(signal.SIGUSR2)):
        handler(signal.SIGUSR2, None)
    elif code == 128 + signal.SIGTERM:
        slurm.requeue_if_preempted()


def _run_job(cfg, run_dir: Path, stop) -> int:
    from vaerun.assemble import checked
    from vaerun.errors import Interrupted, NonFiniteError, Refused, UserError
    from vaerun.jobs import compared_keys, hydra_files
    from vaerun.train import train

    try:
        train(checked(cfg), run_dir, record=hydra_files(cfg), stop=stop,
              compare=compared_keys())
        return 0
    except (UserError, NonFiniteError) as e:
        if not isinstance(e, Refused):  # a refused directory gets no line in its log
            _log_to_file(str(e))
        return error(str(e), e.exit_code)
    except OSError as e:
        if not run_dir.is_dir():
            return error(f"{run_dir} was removed while the run wrote to it ({e.strerror or e}); "
                         "nothing of it is left to resume: start it again")
        _log_to_file(write_error(e))
        return error(write_error(e))
    except Interrupted as e:
        from hydra.core.hydra_config import HydraConfig

        from vaerun.checkpoint import checkpoint_path
        from vaerun.jobs import resume_command

        log = logging.getLogger("vaerun")
        if checkpoint_path(run_dir).exists():
            log.warning("interrupted: checkpoint written to %s; continue with: %s",
                        checkpoint_path(run_dir),
                        resume_command(str(run_dir), list(HydraConfig.get().overrides.task)))
        else:
            log.warning("interrupted before training began: nothing was written to %s", run_dir)
        return e.exit_code


def train_main(args: list[str], stop) -> int:
    import hydra

    from vaerun.errors import UserError
    from vaerun.jobs import (
        CONFIG_NAME,
        hydra_argv,
        is_multirun,
        name_by_swept_keys,
        parse,
        single_run_dir,
        validate,
        with_recorded_overrides,
    )

    try:
        ns = with_recorded_overrides(parse(args))
        composed = validate(ns)  # every job, whatever the flags, before the first runs
        run_dir = single_run_dir(ns, composed)
        overrides = [*ns.overrides, run_dir] if run_dir else list(ns.overrides)
        overrides = name_by_swept_keys(overrides) if is_multirun(ns) else overrides
    except UserError as e:
        return error(str(e))
    task = TrainTask(stop)
    app = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME,
                     version_base="1.3")(task)
    saved = sys.argv
    sys.argv = ["vaerun train", *hydra_argv(ns, overrides)]
    try:
        app()
    finally:
        sys.argv = saved
    return max(task.codes, default=0)


def key_values(args: list[str], usage: str) -> dict[str, str]:
    """`key=value` arguments as a dict; anything else is a UserError showing `usage`."""
    from vaerun.errors import UserError

    bad = [a for a in args if "=" not in a]
    if bad:
        raise UserError(f"{bad[0]!r} is not key=value; usage: {usage}")
    return dict(a.split("=", 1) for a in args)


EVAL_USAGE = "vaerun eval run_dir=PATH [eval.iwae_k=K] [trainer.device=cpu]"


def eval_main(args: list[str], stop) -> int:
    """`vaerun eval run_dir=PATH [eval.iwae_k=K] [eval.batch_size=N] [trainer.device=...]`."""
    from vaerun.errors import Interrupted, UserError

    logging.basicConfig(level=logging.INFO,  # the format of training's log (Hydra's)
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        stream=sys.stdout)
    try:
        pairs = key_values(args, EVAL_USAGE)
        if not pairs.get("run_dir"):
            raise UserError(f"run_dir is required: {EVAL_USAGE}")
        run_dir = Path(pairs.pop("run_dir"))
        if not run_dir.is_dir():
            raise UserError(f"run_dir={run_dir} is not a directory; give a run directory "
                            "made by vaerun train")
        metrics = _evaluate(run_dir, pairs, stop)
    except UserError as e:
        return error(str(e))
    except OSError as e:
        return error(write_error(e, "its records are as they were; free space or make the "
                                    "folder writable"))
    except Interrupted as e:
        return e.exit_code
    for k, v in metrics.items():
        print(f"test/{k} = {v:.6g}")
    print(f"merged into {run_dir / 'metrics.json'} and its TensorBoard events")
    return 0


def _evaluate(run_dir: Path, overrides: dict[str, str], stop) -> dict[str, float]:
    """Evaluate a saved run into its own records, holding its lock (no train or eval of the
    same run meanwhile); a stop signal ends it before anything is written."""
    from vaerun import runtime
    from vaerun.assemble import load_config, load_run
    from vaerun.evaluate import evaluate_run
    from vaerun.logs import RunLog
    from vaerun.rundir import RunLock

    with RunLock(run_dir, "eval") as lock:
        cfg, state = load_config(run_dir, overrides)
        device = runtime.resolve_device(cfg.trainer.device)
        with runtime.applied(device, cfg.trainer.threads):
            data, vae = load_run(run_dir, cfg, state)
            runlog = RunLog(run_dir)
            lock.claim()
            try:
                return evaluate_run(vae, data, cfg, runlog, state["step"], poll=stop.check)
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
    except OSError as e:
        return error(write_error(e, "no report file was replaced; free space or make the "
                                    "folder writable"))
    for p in paths:
        print(f"wrote {p}")
    return 0


def run() -> None:
    """The `vaerun` command: `main()` in a process of its own, then exit with its status."""
    raise SystemExit(main(own_process=True))


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Run one command; its exit status. An in-process caller gets its signal handlers back
    when it returns; in the command's own process (`own_process`) the stop signals are left
    ignored instead, so one that arrives after everything is written, while the interpreter
    exits (a while, after torch), changes nothing."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a command is needed: the usage, as an error
        print(USAGE, end="", file=sys.stderr)
        return error("no command given; choose train, eval or report")
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        from vaerun import __version__

        print(f"vaerun {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "eval"):
        from vaerun.signals import StopRequests

        # first thing: a signal from now on is a stop request, until the command returns
        saves = "checkpoint" if command == "train" else ""
        with StopRequests(saves=saves, then_ignore=own_process) as stop:
            hook, threading.excepthook = threading.excepthook, _quiet_thread_write_errors
            try:
                code = train_main(rest, stop) if command == "train" else eval_main(rest, stop)
            finally:
                threading.excepthook = hook
            return 128 + stop.signum if stop.requested else code
    if command == "report":
        return report_main(rest)
    return error(f"unknown command {command!r}; choose train, eval or report (vaerun --help)")
