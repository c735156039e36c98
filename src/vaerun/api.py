"""vaerun from Python, the functions the command line is a thin layer over (docs/python.md).
Bad input raises a `vaerun.UserError` (`ConfigError` naming the key), never SystemExit; each
call leaves the process as it found it: signal handlers, torch's threads, Hydra's global state,
the root logger and sys.argv.

`vaerun train` runs through Hydra: after vaerun.gate has checked every job, `hydra.main`
composes each, makes its folder, configures its log, writes `.hydra/` and calls `TrainTask`, in
this process or, with a launcher (joblib, submitit), in others. A job's outcome is what it
recorded: here its exit status, elsewhere its metrics.json.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaerun import gate
from vaerun.config import RunConfig, is_number
from vaerun.errors import Interrupted, Refused, RunFailed, UserError
from vaerun.rundir import RunDir, write_error

log = logging.getLogger("vaerun")
CALLS = threading.RLock()  # held by each call: one at a time in a process


@dataclass
class Outcome:
    """How one job ended: its exit status and, if it failed, why (`here`: in this process)."""

    folder: Path
    code: int
    error: BaseException | str | None = None
    here: bool = True

    @property
    def why(self) -> str:
        """The error as one line: a bug (an error of no kind vaerun raises) with its type."""
        e = self.error
        if isinstance(e, Exception) and not isinstance(e, (UserError, RunFailed, Interrupted)):
            return (f"{type(e).__name__}: {e}, an error vaerun did not foresee (its traceback "
                    f"is in {self.folder / RunDir.LOG})")
        return str(e)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """One call at a time in a process (Hydra's state and torch's settings are the process's:
    a call from another thread waits), and Hydra's global state, the root logger's handlers
    and level, and sys.argv as they were."""
    from hydra.core.singleton import Singleton

    with CALLS:
        state, argv, root = Singleton.get_state(), sys.argv, logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            yield
        finally:
            for h in set(root.handlers) - set(handlers):
                h.close()
            root.handlers[:], sys.argv = handlers, argv
            root.setLevel(level)
            Singleton.set_state(state)


def one_run(overrides: Sequence[str]) -> list[str]:
    """The overrides of one run, as a list of strings (a UserError otherwise): no sweep, and
    no flag that only shows something (--cfg, --info, --help: vaerun.compose gives the config)."""
    given = None if isinstance(overrides, (str, bytes)) or not isinstance(
        overrides, Sequence) else list(overrides)
    if given is None or not all(isinstance(o, str) for o in given):
        raise UserError(f"overrides={overrides!r}: give a list of strings, e.g. "
                        "['likelihood=gaussian', 'likelihood.sigma=0.1']")
    flags = gate.read_args(given)[0]  # the gate's own reading of the flags
    if "--multirun" in flags:
        raise UserError("vaerun.train and vaerun.compose take one run: call them for each point "
                        "of a sweep")
    if shows := [f for f in gate.SHOWS if f in flags]:
        raise UserError(f"{shows[0]} shows something on the command line and runs nothing; from "
                        "Python, print(vaerun.compose(overrides)) shows the config")
    return given


def folder(key: str, path: Any) -> str:
    """A folder argument as a path string (a UserError otherwise)."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str) \
            or not os.fspath(path):
        raise UserError(f"{key}={path!r}: give the path of a folder (a str or a pathlib.Path)")
    return os.fspath(path)


def compose(overrides: Sequence[str] = ()) -> Any:
    """The typed, checked config (vaerun.config.RunConfig) that `vaerun train OVERRIDES` runs."""
    with kept():
        return gate.plan([*one_run(overrides), "--cfg", "job"]).configs[0]


def train(overrides: Sequence[str] = (), run_dir: str | os.PathLike | None = None
          ) -> dict[str, Any]:
    """Train one run (`vaerun train OVERRIDES`, in `run_dir` if given); its metrics.json.
    Raises UserError for bad input, RunFailed if it fails, Interrupted on a stop signal."""
    from vaerun.signals import StopRequests

    where = [] if run_dir is None else [
        f"hydra.run.dir={gate.hydra_quoted(folder('run_dir', run_dir))}"]
    with StopRequests() as stop:  # the folder's refusals name it as the caller did: run_dir
        (done,) = run_train([*one_run(overrides), *where], stop, "run_dir" if where else None)
    if isinstance(done.error, BaseException):
        raise done.error
    return RunDir(done.folder).metrics()


def run_train(args: Sequence[str], stop: Any, named: str | None = None) -> list[Outcome]:
    """`vaerun train ARGS`: the gate, then Hydra; each job's outcome (`named`: gate.plan's)."""
    import hydra

    with kept():
        try:  # a stop while the jobs are checked ends it before Hydra makes anything
            plan = gate.plan(list(args), named, stop.check)
            stop.check()
        except Interrupted:
            log.warning("stopped while the command was checked: no job began, nothing written")
            raise
        top = plan.sweep or (plan.jobs[0].folder if plan.jobs else None)
        # accepted: its folder locked (before Hydra writes into it: a second command started
        # with it is refused here) and made vaerun's; a sweep's jobs are locked by each
        with top.locked("train") if top else contextlib.nullcontext():
            if top:
                top.mark("sweep" if plan.sweep else "run")
                top.claim()
            task, sys.argv = TrainTask(plan, stop), ["vaerun train", *plan.argv]
            try:
                hydra.main(config_path=f"pkg://{gate.CONFIG_MODULE}",
                           config_name=gate.CONFIG_NAME, version_base="1.3")(task)()
            except SystemExit:  # the task's own, to end a sweep on a stop signal: the jobs
                if not any(d.code > 128 for d in task.done.values()):  # run so far are its
                    raise  # outcomes, the stopped one last
                return list(task.done.values())
    return [task.done.get(j.folder.path) or recorded(i, j.folder) for i, j in enumerate(plan.jobs)]


def recorded(num: int, rd: RunDir) -> Outcome:
    """A job run in another process: its outcome as its metrics.json records it."""
    try:
        m = rd.metrics()
    except UserError as e:
        m = {"error": str(e)}
    code = m.get("exit_code")  # this command's failure, over the status an earlier one left
    code = int(code) if is_number(code) and 1 <= code < 256 else int(m.get("status") != "finished")
    why = m.get("error") or f"it ended {m.get('status', 'with no record')}; see {rd.file(rd.LOG)}"
    how = f"was stopped ({why})" if code > 128 else f"failed: {why}"  # stopped: checkpointed
    return Outcome(rd.path, code, None if code == 0 else f"job {num} ({rd}) {how}", False)


class TrainTask:
    """Hydra's task function: one job. In this process it trains with the gate's checked config
    and keeps the outcome (a stop signal also ends a sweep); elsewhere (a launcher's worker, a
    SLURM job) it records a failure in the job's metrics.json, and a SLURM job stopped by a
    signal is handed back to the scheduler."""

    def __init__(self, plan: gate.Plan, stop: Any):
        self.plan, self.stop, self.pid, self.done = plan, stop, os.getpid(), {}
        self.__name__ = self.__qualname__ = "train"
        self.__module__ = __name__

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stop": None, "done": {}, "plan": None}  # for workers

    def __call__(self, cfg: Any) -> int:
        from hydra.core.hydra_config import HydraConfig

        from vaerun import slurm

        hc = HydraConfig.get()
        rd, here = RunDir(hc.runtime.output_dir), os.getpid() == self.pid and self.plan
        job = next((j for j in self.plan.jobs if j.folder.path == rd.path), None) if here else None
        skip = set(hc.job.config.override_dirname.exclude_keys or ())
        varied = [k for k in (o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task)
                  if k not in skip]
        done = run_job(cfg, rd, job, self.stop if here else None, list(hc.overrides.task), varied,
                       str(hc.mode) == "RunMode.MULTIRUN")
        if here:
            self.done[rd.path] = done
            if done.code > 128:  # a stop signal: no further job (Hydra's launcher goes on
                raise SystemExit(done.code)  # after an Exception), caught in run_train
        elif done.code:  # under the lock: not into a record another command holds now
            with contextlib.suppress(UserError), rd.locked("record"):
                rd.write_json(rd.METRICS, {"status": "failed", **rd.metrics(),
                                           "exit_code": done.code, "error": done.why})
            if done.code > 128 and slurm.job_id():  # stopped, checkpoint written: requeue
                slurm.hand_back(done.code)
                raise SystemExit(done.code)
        return done.code


def run_job(cfg: Any, rd: RunDir, job: gate.Job | None, stop: Any, overrides: list[str],
            varied: list[str], swept: bool = False) -> Outcome:
    """Train one job in `rd`: its outcome, never an exception."""
    from vaerun.assemble import checked
    from vaerun.loop import train as train_run

    try:
        train_run(job.cfg if job else checked(cfg), rd, stop=stop, compare=varied, swept=swept)
        return Outcome(rd.path, 0)
    except Interrupted as e:
        if rd.file(rd.CHECKPOINT).exists():
            log.warning("interrupted: checkpoint written to %s; continue with: %s",
                        rd.file(rd.CHECKPOINT), gate.resume_command(str(rd), overrides))
        else:
            log.warning("interrupted before training began: nothing was written to %s", rd)
        return Outcome(rd.path, e.exit_code, e)
    except (UserError, RunFailed, OSError) as e:
        if isinstance(e, OSError):
            fix = ("the last checkpoint is whole: free space or make the folder writable, then "
                   "resume with trainer.resume=true" if rd.file(rd.CHECKPOINT).exists() else
                   "no checkpoint was written: free space or make the folder writable, then "
                   "start it again")
            e = UserError(write_error(e, fix) if rd.path.is_dir() else f"{rd} was removed while "
                          "the run wrote to it; nothing of it is left to resume: start it again")
            failed(rd, Outcome(rd.path, e.exit_code, e))
        if not isinstance(e, Refused):  # the run's own log says why too
            record = log.makeRecord(log.name, logging.ERROR, __file__, 0, str(e), (), None)
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.FileHandler):
                    h.handle(record)
        # a refused new run leaves no folder; one that another command holds is not removed
        if job and job.new and rd.kind() == "run":
            with contextlib.suppress(Refused), rd.locked("remove"):
                if not rd.file(rd.CHECKPOINT).exists():
                    shutil.rmtree(rd.path, ignore_errors=True)
        return Outcome(rd.path, e.exit_code, e)
    except Exception as e:  # noqa: BLE001 (a bug: its traceback in the log, the error raised
        log.exception("the run failed on an error vaerun did not foresee")  # by vaerun.train)
        return failed(rd, Outcome(rd.path, 1, e))


def failed(rd: RunDir, done: Outcome) -> Outcome:
    """A run that began and then failed on a full disk or a bug: its metrics.json says so, as
    the loop's own failures do, not `running` (best effort: the disk may still be full)."""
    if rd.file(rd.METRICS).exists():
        with contextlib.suppress(OSError, UserError), rd.locked("record"):
            rd.write_json(rd.METRICS, {**rd.metrics(), "status": "failed", "error": done.why,
                                       "exit_code": done.code})
    return done


def evaluate(run_dir: str | os.PathLike, overrides: Sequence[str] = (), stop: Any = None
             ) -> dict[str, float]:
    """Evaluate a saved run again into its own records, holding its lock (`vaerun eval
    run_dir=... eval.iwae_k=5000`); the values it measured, named as in metrics.json
    (`test/nll_iwae`). `overrides`: eval.* and the keys that never change a result
    (trainer.device, trainer.threads)."""
    from vaerun import runtime
    from vaerun.assemble import load_config, load_run
    from vaerun.data import polled
    from vaerun.evaluation import evaluate_run
    from vaerun.logs import RunLog
    from vaerun.signals import StopRequests

    rd, values = saved_run(run_dir, overrides)
    with CALLS, (contextlib.nullcontext(stop) if stop else StopRequests(saves="")) as stop, \
            rd.locked("eval"):
        cfg, state = load_config(rd.path, values)
        unfinished(rd, cfg, state)
        with runtime.applied(runtime.resolve_device(cfg.trainer.device), cfg.trainer.threads):
            with polled(stop.check):
                data, vae = load_run(rd.path, cfg, state)
            rd.claim()
            runlog = RunLog(rd)
            try:
                got = evaluate_run(vae, data, cfg, runlog, state["step"], poll=stop.check)
                return {f"test/{k}": v for k, v in got.items()}
            finally:
                runlog.close(quiet=True)


def saved_run(run_dir: Any, overrides: Sequence[str], loop: bool = True
              ) -> tuple[RunDir, dict[str, Any]]:
    """A run directory vaerun made, with its checkpoint, and the overrides as values (`loop`:
    a sweep's refusal gives the shell loop that evaluates each of its runs)."""
    rd, given = RunDir(folder("run_dir", run_dir)), one_run(overrides)
    ckpt, kind = rd.file(rd.CHECKPOINT), rd.kind()
    if kind == "sweep":
        each = shlex.join(["vaerun", "eval", "run_dir=$r", *given]).replace("'run_dir=$r'",
                                                                            '"run_dir=$r"')
        raise UserError(f"run_dir={rd.given} is a sweep, whose runs are its folders: give one" + (
            f", or each in turn: for r in {shlex.quote(str(rd.path))}/*/; do {each}; done"
            if loop else ""))
    for bad, why in ((not rd.path.is_dir(), "is not a directory"),
                     (not ckpt.exists(), f"holds no checkpoint ({ckpt})"),
                     (kind != "run", "is not a run directory vaerun made (no .vaerun marker)")):
        if bad:
            raise UserError(f"run_dir={rd.given} {why}; give a run directory made by vaerun train")
    rd.check_links("run_dir")
    return rd, {p.key_or_group: gate.absolute(p, False).value() for p in gate.parse(given, False)}


def unfinished(rd: RunDir, cfg: RunConfig, state: dict[str, Any]) -> None:
    """A run stopped before its end is used as its checkpoint stands, and the log says so."""
    if state["status"] != "finished":
        log.warning("the run in %s is %s after %d of its %d epochs%s (step %d): this is its "
                    "model as it stands; trainer.resume=true finishes it", rd, state["status"],
                    state["epoch"], cfg.trainer.epochs, " and part of the next" * bool(
                        state["batch"]), state["step"])


@dataclass
class Trained:
    """A saved run, loaded: its VAE in eval mode (`vae.posterior(x)` q(z|x), `vae.prior()`
    p(z), `vae.likelihood(vae.decode(z), x)` p(x|z), each a torch.distributions one), its
    data (`data.test`: [N, D] pixels in [0, 1], on `trainer.device`) and its config."""

    vae: Any
    data: Any
    cfg: RunConfig


def load(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> Trained:
    """The trained model of a saved run, its data and config, to use in a notebook (reads only:
    the run's files are left as they are). `overrides`: the keys that never change a result
    (trainer.device=cpu for a run trained on a GPU)."""
    from vaerun import runtime
    from vaerun.assemble import load_config, load_run

    rd, values = saved_run(run_dir, overrides, loop=False)
    with CALLS:
        cfg, state = load_config(rd.path, values)
        unfinished(rd, cfg, state)
        with runtime.applied(runtime.resolve_device(cfg.trainer.device), cfg.trainer.threads):
            data, vae = load_run(rd.path, cfg, state)  # float32, as trained, whatever the default
    return Trained(vae.eval(), data, cfg)


def report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None, stop: Any = None
           ) -> list[Path]:
    """Tables and figures of every run below `sweep_dir`, written into it (a sweep's folder),
    or into `out` (a new folder: for runs of your own folder, e.g. a notebook's); their paths.
    `stop`: the command's stop requests (a stop signal raises Interrupted, nothing written)."""
    from vaerun.reporting import report as write_report

    with CALLS:
        return write_report(RunDir(folder("sweep_dir", sweep_dir)),
                            None if out is None else RunDir(folder("out", out)),
                            stop.check if stop else lambda: None)


def objective(cfg: Any) -> Any:
    """The loss of a config (`compose`'s) as written: a vaerun.elbo.Objective, with its weights
    a_rec, a_kl for a batch, its per-image loss and the model it implies."""
    from vaerun.assemble import objective as of
    from vaerun.data import Dataset

    if not isinstance(cfg, RunConfig):
        raise UserError(f"cfg={cfg!r:.80}: give the config vaerun.compose(overrides) returns")
    return of(cfg, math.prod(Dataset.lookup(cfg.dataset.name).shape_of(cfg.dataset)))


def implied_sigma(cfg: Any) -> float:
    """The σ of the Gaussian VAE (at β = 1) that a squared-error loss line is."""
    return objective(cfg).implied(cfg.trainer.batch_size).get("implied_sigma", math.nan)


def implied_beta(cfg: Any) -> float:
    """The β of the VAE of the likelihood's own −log p that a loss line is."""
    return objective(cfg).implied(cfg.trainer.batch_size).get("implied_beta", math.nan)
