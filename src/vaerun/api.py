"""vaerun from Python: the functions the command line is a thin layer over.

    import vaerun
    metrics = vaerun.train(["likelihood=gaussian", "trainer.epochs=1"], run_dir="runs/mse")
    vaerun.evaluate("runs/mse", ["eval.iwae_k=1000"])      # merged into the run's records
    cfg = vaerun.compose(["recipe=antixk"])                 # the typed, checked config
    vaerun.implied_sigma(cfg)                               # 0.313: the σ the loss line implies

Bad input raises a `vaerun.UserError` (`ConfigError` naming the key); nothing here calls
sys.exit. Each call leaves the process as it found it: signal handlers, torch's threads,
Hydra's global state, the root logger and sys.argv.

`vaerun train` runs through Hydra (`hydra.main`): after vaerun.gate has checked every job,
Hydra composes each, makes its folder, configures its log and writes `.hydra/`, and calls
`TrainTask` with it, in this process or, with a launcher (joblib, submitit), in others. A job's
outcome is what it recorded: in this process its exit status, elsewhere its metrics.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaerun import gate
from vaerun.errors import Interrupted, Refused, RunFailed, UserError
from vaerun.rundir import RunDir, write_error

log = logging.getLogger("vaerun")


@dataclass
class Outcome:
    """How one job of a command ended: its exit status and, if it failed, why."""

    folder: Path
    code: int
    error: BaseException | str | None = None
    here: bool = True  # run in this process (its line is the caller's to print)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Hydra's global state, the root logger's handlers and level, and sys.argv as they were."""
    from hydra.core.singleton import Singleton

    state, argv, root = Singleton.get_state(), sys.argv, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:], sys.argv = handlers, argv
        root.setLevel(level)
        Singleton.set_state(state)


def compose(overrides: Sequence[str] = ()) -> Any:
    """The typed, checked config (vaerun.config.RunConfig) that `vaerun train OVERRIDES` runs."""
    with kept():
        return gate.plan([*overrides, "--cfg", "job"]).configs[0]


def train(overrides: Sequence[str] = (), run_dir: str | os.PathLike | None = None
          ) -> dict[str, Any]:
    """Train one run (`vaerun train OVERRIDES`, in `run_dir` if given) and return its metrics
    (metrics.json). Raises UserError for bad input, RunFailed for a failed run, Interrupted for
    a stop signal (after its checkpoint)."""
    from vaerun.signals import StopRequests

    args = [*overrides, *([f"hydra.run.dir={gate.hydra_quoted(os.fspath(run_dir))}"]
                          if run_dir is not None else [])]
    if any(a in ("-m", "--multirun") for a in args):
        raise UserError("vaerun.train runs one run; call it once per point of a sweep (or use "
                        "vaerun train -m from a shell)")
    with StopRequests() as stop:
        (done,) = run_train(args, stop)
    if isinstance(done.error, BaseException):
        raise done.error
    return RunDir(done.folder).metrics()


def run_train(args: Sequence[str], stop: Any) -> list[Outcome]:
    """`vaerun train ARGS`: the gate, then Hydra; each job's outcome ([] where Hydra only
    showed something)."""
    with kept():
        plan = gate.plan(list(args))
        task = TrainTask(plan, stop)
        if plan.jobs:  # accepted: the folder made now, as vaerun's (a sweep's jobs': by each)
            (plan.sweep or plan.jobs[0].folder).mark("sweep" if plan.sweep else "run")
        import hydra

        sys.argv = ["vaerun train", *plan.argv]
        hydra.main(config_path=f"pkg://{gate.CONFIG_MODULE}", config_name=gate.CONFIG_NAME,
                   version_base="1.3")(task)()
    return [task.done.get(j.folder.path) or recorded(i, j.folder) for i, j in enumerate(plan.jobs)]


def recorded(num: int, rd: RunDir) -> Outcome:
    """A job run in another process: its outcome as its metrics.json records it."""
    try:
        m = rd.metrics()
    except UserError as e:
        m = {"status": "unreadable", "error": str(e)}
    code = 0 if m.get("status") == "finished" else int(m.get("exit_code") or 1)
    why = m.get("error") or f"it ended {m.get('status', 'with no record')}; see {rd.file(rd.LOG)}"
    return Outcome(rd.path, code, None if code == 0 else f"job {num} ({rd}) failed: {why}", False)


class TrainTask:
    """Hydra's task function for `vaerun train`: one job. In this process it trains with the
    gate's checked config and keeps the outcome (a stop signal also ends a sweep); elsewhere
    (a launcher's worker or a SLURM job) it records a failure in the job's metrics.json, and a
    SLURM job stopped by a signal is handed back to the scheduler."""

    def __init__(self, plan: gate.Plan, stop: Any):
        self.plan, self.stop, self.pid = plan, stop, os.getpid()
        self.done: dict[Path, Outcome] = {}
        self.__name__ = self.__qualname__ = "train"
        self.__module__ = __name__

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stop": None, "done": {}, "plan": None}  # for workers

    def __call__(self, cfg: Any) -> int:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        rd, here = RunDir(hc.runtime.output_dir), os.getpid() == self.pid and self.plan
        job = next((j for j in self.plan.jobs if j.folder.path == rd.path), None) if here else None
        skip = set(hc.job.config.override_dirname.exclude_keys or ())
        varied = [o.split("=", 1)[0] for o in hc.overrides.task if "=" in o]
        done = run_job(cfg, rd, job, self.stop if here else None, list(hc.overrides.task),
                       [k.lstrip("+~") for k in varied if k not in skip])
        if here:
            self.done[rd.path] = done
            if done.code > 128:  # a stop signal: no further job
                raise SystemExit(done.code)
        elif done.code:
            rd.write_json(rd.METRICS, {**safe_metrics(rd), "exit_code": done.code,
                                       "error": str(done.error)})
            if os.environ.get("SUBMITIT_EXECUTOR"):  # SLURM records a failure only so
                from vaerun import slurm

                slurm.hand_back(done.code)
                raise SystemExit(done.code)
        return done.code


def safe_metrics(rd: RunDir) -> dict[str, Any]:
    try:
        return {"status": "failed", **rd.metrics()}
    except UserError:
        return {"status": "failed"}


def run_job(cfg: Any, rd: RunDir, job: gate.Job | None, stop: Any, overrides: list[str],
            keys: list[str]) -> Outcome:
    """Train one job in `rd`; its outcome, never an exception (a stop signal: 128 + it)."""
    from vaerun.assemble import checked
    from vaerun.loop import train as train_run

    try:
        train_run(job.cfg if job else checked(cfg), rd, stop=stop, compare=keys)
        return Outcome(rd.path, 0)
    except Interrupted as e:
        if rd.file(rd.CHECKPOINT).exists():
            log.warning("interrupted: checkpoint written to %s; continue with: %s",
                        rd.file(rd.CHECKPOINT), gate.resume_command(str(rd), overrides))
        else:
            log.warning("interrupted before training began: nothing was written to %s", rd)
        return Outcome(rd.path, e.exit_code, e)
    except (UserError, RunFailed) as e:
        if not isinstance(e, Refused):
            log_to_file(str(e))
        if job and job.new and not rd.file(rd.CHECKPOINT).exists() and rd.kind() == "run":
            shutil.rmtree(rd.path, ignore_errors=True)  # a refused new run leaves no folder
        return Outcome(rd.path, e.exit_code, e)
    except OSError as e:
        if not rd.path.is_dir():
            e = UserError(f"{rd} was removed while the run wrote to it ({e.strerror or e}); "
                          "nothing of it is left to resume: start it again")
        else:
            e = UserError(write_error(e, "the last checkpoint is whole: free space or make the "
                                         "folder writable, then resume with trainer.resume=true"
                                      if rd.file(rd.CHECKPOINT).exists() else
                                      "no checkpoint was written: free space or make the folder "
                                      "writable, then start it again"))
            log_to_file(str(e))
        return Outcome(rd.path, 2, e)


def log_to_file(msg: str) -> None:
    """An error into the run's log file only: the console gets the one `error:` line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def evaluate(run_dir: str | os.PathLike, overrides: Sequence[str] = (), stop: Any = None
             ) -> dict[str, float]:
    """Evaluate a saved run again (`vaerun eval run_dir=... eval.iwae_k=5000`) into its own
    records, holding its lock; its test metrics. `overrides`: eval.* and the keys that never
    change a result (trainer.device, trainer.threads)."""
    from vaerun import runtime
    from vaerun.assemble import load_config, load_run
    from vaerun.evaluation import evaluate_run
    from vaerun.logs import RunLog
    from vaerun.signals import StopRequests

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise UserError(f"run_dir={rd.given} is not a directory; give a run directory made by "
                        "vaerun train")
    if not rd.file(rd.CHECKPOINT).exists():
        raise UserError(f"run_dir={rd.given} holds no checkpoint ({rd.file(rd.CHECKPOINT)}); give "
                        "a run directory made by vaerun train")
    if rd.kind() != "run":
        raise UserError(f"run_dir={rd.given} is not a run directory vaerun made (no .vaerun "
                        "marker); give one made by vaerun train")
    values = {p.key_or_group: p.value() for p in gate.parse(list(overrides), False)}
    for k, v in values.items():
        gate.refuse_resolver(k, v)
    with (contextlib.nullcontext(stop) if stop else StopRequests(saves="")) as stop, \
            rd.locked("eval"):
        cfg, state = load_config(rd.path, values)
        with runtime.applied(runtime.resolve_device(cfg.trainer.device), cfg.trainer.threads):
            data, vae = load_run(rd.path, cfg, state)
            rd.claim()
            runlog = RunLog(rd.path)
            try:
                return evaluate_run(vae, data, cfg, runlog, state["step"], poll=stop.check)
            finally:
                runlog.close(quiet=True)


def report(sweep_dir: str | os.PathLike) -> list[Path]:
    """`vaerun report sweep_dir=...`: tables and figures of every run below it, written into it
    (a folder vaerun made); their paths."""
    from vaerun.reporting import report as write_report

    return write_report(RunDir(sweep_dir))


def objective(cfg: Any) -> Any:
    """The loss of a config (`compose`'s), as written: an Objective with its weights a_rec,
    a_kl per batch, its per-image loss and the model it implies."""
    from vaerun.assemble import objective as of
    from vaerun.data import Dataset

    return of(cfg, int(__import__("math").prod(Dataset.lookup(cfg.dataset.name).shape_of(cfg.dataset))))


def implied_sigma(cfg: Any) -> float:
    """The σ of the Gaussian VAE (at β = 1) that a squared-error loss line is."""
    return objective(cfg).implied(cfg.trainer.batch_size)["implied_sigma"]


def implied_beta(cfg: Any) -> float:
    """The β of the likelihood's VAE that a loss line of its −log p is."""
    return objective(cfg).implied(cfg.trainer.batch_size)["implied_beta"]
