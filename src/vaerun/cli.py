"""`vaerun train|eval|report`: the command line, a thin layer over vaerun.api.

This is the only module that prints `error:` lines and turns errors into exit statuses (2: bad
input; 3: a failed run; 128 + N: stopped by signal N). Its imports of vaerun's stages sit inside
the functions, so `vaerun --help` answers without loading torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import threading
from collections.abc import Iterator

USAGE = """usage: vaerun <command> [key=value ...]

commands:
  train    train a VAE (a Hydra app: `vaerun train --help` lists the config groups)
             vaerun train likelihood=gaussian likelihood.sigma=0.1
             vaerun train -m likelihood=gaussian likelihood.sigma=0.05,0.1,0.3,1
  eval     evaluate a finished run (IWAE log-likelihood, bits/dim, active units, pictures)
             vaerun eval run_dir=outputs/... eval.iwae_k=5000
  report   tables and plots over a sweep (or runs of one folder of yours, into out=)
             vaerun report sweep_dir=outputs/multirun/...

Compare runs with: tensorboard --logdir outputs
"""
COMMANDS = {"train": "", "eval": "run_dir=PATH [eval.iwae_k=K] [trainer.device=cpu]",
            "report": "sweep_dir=PATH [out=PATH]"}
HELP = {"eval": """
Evaluates a finished run again, into its metrics.json and TensorBoard events, holding its lock.
It may set eval.* (iwae_k: importance samples of the IWAE bound; quality_images: images for
FID, 0 skips it; batch_size; seed), trainer.device, trainer.threads, and dataset.root (where
the same images are now); nothing that changes what was trained.
""", "report": """
Writes report.md, report.csv and figures over every run below sweep_dir: into it (a folder
vaerun made), or into out=PATH (a new folder, for runs of a folder of yours).
"""}


def error(msg: str, code: int = 2) -> int:
    print(f"error: {' '.join(str(msg).splitlines())}", file=sys.stderr)
    return code


@contextlib.contextmanager
def quiet_thread_write_errors() -> Iterator[None]:
    """TensorBoard's writer thread dies of a disk error with a traceback; the same error reaches
    the main thread at the next flush, which reports it as one line."""
    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, OSError):
            threading.__excepthook__(args)

    old, threading.excepthook = threading.excepthook, hook
    try:
        yield
    finally:
        threading.excepthook = old


def path_arg(args: list[str], key: str) -> tuple[str, list[str]]:
    """`key=PATH` out of a command's words (the rest are overrides); a UserError without it."""
    from vaerun.errors import UserError

    name = "eval" if key == "run_dir" else "report"
    usage = f"usage: vaerun {name} {COMMANDS[name]}"
    bad = [a for a in args if "=" not in a]
    if bad:
        hint = f" (a folder: {key}={shlex.quote(bad[0])})" if os.path.isdir(bad[0]) else ""
        raise UserError(f"{bad[0]!r} is not key=value{hint}; {usage}")
    paths = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    if not paths or not paths[-1]:
        raise UserError(f"{key} {'needs a path' if paths else 'is required'}: {usage}")
    return paths[-1], [a for a in args if a.split("=", 1)[0] != key]


def command(name: str, args: list[str], stop) -> int:  # noqa: ANN001
    from vaerun import api
    from vaerun.errors import UserError

    if name == "train":
        outcomes = api.run_train(args, stop)
        for o in outcomes:  # a job stopped by a signal is no error (its checkpoint is written)
            if o.code > 128 and not o.here:  # a worker's: its log line is not on this screen
                print(f"{o.why}; the same command with trainer.resume=true continues it",
                      file=sys.stderr)
            elif o.code and o.code <= 128:
                error(o.why, o.code)
        return max((o.code for o in outcomes), default=0)
    if name == "eval":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,  # the format of training's log
                            format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        run_dir, overrides = path_arg(args, "run_dir")
        metrics = api.evaluate(run_dir, overrides, stop)
        for k, v in metrics.items():
            print(f"{k} = {v:.6g}")
        print(f"merged into {run_dir}/metrics.json and its TensorBoard events")
        return 0
    sweep_dir, extra = path_arg(args, "sweep_dir")
    if other := [a for a in extra if a.split("=", 1)[0] != "out"]:
        raise UserError(f"unexpected argument {other[0]!r}; usage: vaerun report "
                        f"{COMMANDS['report']}")
    for p in api.report(sweep_dir, path_arg(extra, "out")[0] if extra else None, stop):
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Run one command; its exit status. An in-process caller gets its signal handlers back
    when it returns; in the command's own process (`own_process`) the stop signals are left
    ignored instead, so one that arrives while the interpreter exits changes nothing."""
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
    if argv[0] not in COMMANDS:
        return error(f"unknown command {argv[0]!r}; choose train, eval or report (vaerun --help)")
    if argv[0] in HELP and any(a in ("-h", "--help") for a in argv[1:]):
        print(f"usage: vaerun {argv[0]} {COMMANDS[argv[0]]}{HELP[argv[0]]}", end="")
        return 0
    from vaerun.errors import Interrupted, UserError
    from vaerun.rundir import write_error
    from vaerun.signals import StopRequests

    with StopRequests(saves="checkpoint" if argv[0] == "train" else "",
                      then_ignore=own_process) as stop, quiet_thread_write_errors():
        try:
            code = command(argv[0], argv[1:], stop)
        except UserError as e:
            code = error(str(e), e.exit_code)
        except OSError as e:
            code = error(write_error(e, "nothing of it was replaced; free space or make the "
                                        "folder writable"))
        except Interrupted as e:
            code = e.exit_code
    return 128 + stop.signum if stop.requested else code


def run() -> None:
    """The `vaerun` command: `main()` in a process of its own, then exit with its status."""
    raise SystemExit(main(own_process=True))
