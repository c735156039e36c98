"""The training loop, in small steps: start or resume, one epoch, end of epoch, finish.

Data sits in memory on the device; each epoch draws a seeded permutation and slices batches
from it. Per-step terms are summed on the device and read back every `trainer.log_every` steps.
Every epoch ends with the test-set ELBO terms (TensorBoard + metrics.json) and a checkpoint;
the run ends with the evaluation of vaerun.evaluation. Stop signals are honoured from start-up to
the last write. The loop knows no likelihood: it asks the parts what to say.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import time
import warnings
from typing import Any

import torch
from tqdm import tqdm

from vaerun import assemble, runtime
from vaerun.assemble import Session
from vaerun.config import DEFINING, HEADLINE, RunConfig, flat, hparam_columns, hparams
from vaerun.data import polled
from vaerun.elbo import Meter, elbo_terms, evaluate, seeded
from vaerun.errors import Interrupted, NonFiniteError, OutOfMemory, Refused, RunFailed, UserError
from vaerun.evaluation import evaluate_run, write_pictures
from vaerun.logs import ProgressLines, RunLog, phase
from vaerun.rundir import RunDir
from vaerun.signals import StopRequests
from vaerun.step import TrainStep, compile_mode

log = logging.getLogger("vaerun")
FAILURE = ("error", "exit_code")  # what a failed command records in metrics.json, cleared by the next


def train(cfg: RunConfig, run_dir: str | os.PathLike | RunDir, stop: StopRequests | None = None,
          compare: list[str] | tuple = (), swept: bool = False) -> dict[str, Any]:
    """Train one run in `run_dir` (new, or resumed from its checkpoint), holding the folder's
    lock and marking it vaerun's; its metrics.json content. `stop`: the command's stop requests
    (else the run installs its own for its duration). Raises Interrupted on a stop signal,
    after writing the checkpoint if anything was started. torch's process-wide settings are
    handed back after. `compare`: the keys the command varied (`swept`: in a sweep), HParams'
    first columns."""
    rd, opened = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir), time.perf_counter()
    t = cfg.trainer
    device = runtime.resolve_device(t.device)
    with (contextlib.nullcontext(stop) if stop else StopRequests()) as stop, \
            rd.locked("train"), runtime.applied(device, t.threads, t.deterministic):
        stop.check()  # asked to stop before anything started: leave nothing behind
        try:
            with polled(stop.check):  # a long load stops on a stop request too
                session = assemble.start(cfg, rd)
            rd.metrics()  # a record it could not update: refused now
        except UserError as e:  # a run not accepted: its records stay as they were
            raise Refused(str(e)) from None
        session.opened = opened
        rd.mark("run")
        rd.claim()
        rd.clean_temporaries()
        if session.finished:
            log.info("%s is already finished (epoch %d of %d); nothing to do", rd,
                     session.progress.epoch, cfg.trainer.epochs)
            had, asked = (flat(c.get("eval"), "eval") for c in (session.recorded, cfg.plain))
            metrics = rd.metrics()  # what a later `vaerun eval` measured is not asked again
            done = {f"eval.{k}": (0, int(metrics[f"test/{k}"])) for k in ("iwae_k", "quality_images")
                    if f"test/{k}" in metrics}
            if changed := [f"{k}={v}" for k, v in asked.items()
                           if had.get(k, v) != v and v not in done.get(k, ())]:
                log.warning("its evaluation is not redone for %s: `vaerun eval %s` evaluates it "
                            "again", ", ".join(changed), shlex.join([f"run_dir={rd}", *changed]))
            if set(FAILURE) & metrics.keys():  # an earlier command's failure
                metrics = {k: v for k, v in metrics.items() if k not in FAILURE}
                rd.write_json(rd.METRICS, metrics)
            return metrics
        return _train(session, stop, list(compare), swept)


def _train(session: Session, stop: StopRequests, compare: list[str], swept: bool
           ) -> dict[str, Any]:
    note = session.vae.likelihood.explain(session.data.values)
    if note:  # what the likelihood is on these data: chosen on purpose, so a note
        log.info("note: %s", note)
    p = session.progress
    runlog = RunLog(session.run_dir, purge_step=p.step + 1 if session.resumed else None)
    trainer = Trainer(session, runlog, stop, compare, swept)
    lik = session.cfg.likelihood
    sigma = getattr(lik, "sigma", None) if session.cfg.loss.recon.value == "nll" else None
    log.info("%s", trainer.objective.describe(session.cfg.trainer.batch_size, lik.name + (
        f" (sigma = {sigma:g})" if sigma is not None else ""), session.data.image_shape))
    try:
        metrics = trainer.run()
    except (MemoryError, torch.OutOfMemoryError) as e:
        oom = OutOfMemory(f"out of memory ({type(e).__name__}) at epoch {p.epoch + 1}, step "
                          f"{p.step}; the last good checkpoint is kept; make the model or "
                          "trainer.batch_size smaller")
        trainer.record("failed", error=str(oom), exit_code=oom.exit_code)
        runlog.close(quiet=True)
        raise oom from None
    except RunFailed as e:
        trainer.record("failed", error=str(e), exit_code=e.exit_code)
        runlog.close(quiet=True)
        raise
    except BaseException:
        runlog.close(quiet=True)
        raise
    finally:
        trainer.train_step.close()
    runlog.close()
    return metrics


def summary(m: dict[str, Any], run_dir: Any, latents: int) -> str:
    """A few labelled numbers of a finished run, and where the rest are kept."""
    parts = [f"{label} {m[k]:.4g}{unit}".lstrip() for k, label, unit in (
        ("test/elbo", "test ELBO", " nats"), ("test/nll_iwae", "IWAE -log p(x)", " nats"),
        ("test/bits_per_dim", "", " bits/dim"), ("test/kl", "KL", " nats"),
        ("test/implied_sigma", "implied sigma", ""), ("test/fid_mean", "FID of prior means", ""))
        if isinstance(m.get(k), float)]
    if isinstance(m.get("test/active_units"), float):
        parts.append(f"{m['test/active_units']:.0f} of {latents} latents active")
    return (f"test: {', '.join(parts)}; every number in {run_dir}/metrics.json and TensorBoard "
            f"(tensorboard --logdir {shlex.quote(str(run_dir))}), pictures in {run_dir}/images/")


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's data noise (binarisation, dequantisation): a function of the run's
    seed and the step alone, so no generator on the device needs saving, and a resume
    continues the same stream on any device."""
    return (seed + (step + 1) * 0x9E3779B97F4A7C15) % (1 << 63)


class Trainer:
    """One run's loop over epochs, with its logs and checkpoints. A step makes no host-device
    sync: the loss is checked for NaN or Inf on the logging steps, where the meter is read."""

    def __init__(self, session: Session, runlog: RunLog, stop: StopRequests,
                 compare: list[str] | tuple = (), swept: bool = False):
        self.s, self.runlog, self.stop = session, runlog, stop
        self.cfg, self.p = session.cfg, session.progress
        self.n, self.bs = len(session.data.train), self.cfg.trainer.batch_size
        self.steps_per_epoch = math.ceil(self.n / self.bs)
        self.last_loss: float | None = None
        self.compare, self.swept = list(compare), swept  # what the command varied (HParams)
        self.objective = assemble.objective(self.cfg, session.data.dim)
        # auto chooses by the run's steps, not those left: a resumed run trains as it began
        steps = self.steps_per_epoch * self.cfg.trainer.epochs
        self.train_step = TrainStep(session.vae, session.opt, self.objective,
                                    compile_mode(self.cfg.trainer.compile, session.device, steps))
        self.train_step.progress_seconds = self.cfg.trainer.progress_seconds
        # every image once an epoch, the last batch padded to the others' shape (mask 0)
        total = self.steps_per_epoch * self.bs
        self.mask = (torch.arange(total, device=session.device) < self.n).float()
        self.x_epoch = self.order = None

    def run(self) -> dict[str, Any]:
        s, t = self.s, self.cfg.trainer
        for stale in FAILURE:
            self.runlog.metrics.pop(stale, None)
        if s.resumed:
            log.info("resuming %s at epoch %d, step %d", s.run_dir, self.p.epoch, self.p.step)
        else:
            if t.resume:  # said: a folder mistyped in a resume would start over without a word
                log.info("trainer.resume=true: %s holds no checkpoint, so this is a new run",
                         s.run_dir)
            self.checkpoint("running")  # a last good checkpoint exists from the first step on
            self.runlog.layout()
        self.record("running")
        n = torch.get_num_threads()
        log.info("training %s: %d images, %d epoch%s of %d steps, on %s (%d thread%s)", s.run_dir,
                 self.n, t.epochs, "" if t.epochs == 1 else "s", self.steps_per_epoch, s.device,
                 n, "" if n == 1 else "s")
        s.vae.train()
        while self.p.epoch < t.epochs:
            self.halt_if_asked()
            seconds = self.epoch()
            self.end_epoch(seconds)
        return self.finish()

    # -- the steps ----------------------------------------------------------------------------
    def epoch(self) -> float:
        """Train from the current position to the end of the epoch (or a stop request);
        returns the seconds it took."""
        s, p, t = self.s, self.p, self.cfg.trainer
        if p.perm is None:  # drawn on the CPU (the checkpoint's stream), used on the device
            p.perm = torch.randperm(self.n, generator=s.gen).to(s.device)
            p.batch = 0
        if self.order is None or p.batch == 0:
            self.epoch_images()
        bar = tqdm(total=self.steps_per_epoch, initial=p.batch, disable=None, leave=False,
                   desc=f"epoch {p.epoch + 1}/{t.epochs}", dynamic_ncols=True)
        lines = ProgressLines(f"epoch {p.epoch + 1}/{t.epochs}", self.steps_per_epoch, "steps",
                              t.progress_seconds, p.batch, self.progress_note)
        started = time.perf_counter()
        try:
            for b in range(p.batch, self.steps_per_epoch):
                self.step(b)
                bar.update()
                lines.update(b + 1)
                if p.step % t.log_every == 0:
                    self.log_train(bar)
                if self.stop.requested:
                    break
            if p.batch == self.steps_per_epoch and s.meter:  # every step lands in some point
                self.log_train(bar)
        finally:
            bar.close()
            lines.close()
        seconds = time.perf_counter() - started
        p.seconds += seconds
        return seconds

    def epoch_images(self) -> None:
        """The epoch's images, their noise drawn (vaerun.data), and its order padded to whole
        batches."""
        s, p = self.s, self.p
        self.x_epoch = s.data.epoch_train(s.seed, p.epoch)
        self.order = torch.nn.functional.pad(p.perm, (0, len(self.mask) - self.n))

    def step(self, b: int) -> None:
        """One optimizer step on batch `b` of the epoch's order; the sums of its per-image terms
        are added to the meter on the device (no host-device sync). A logging step also measures
        the BCE of the decoder mean on its batch (with a noise of its own)."""
        s, p, t = self.s, self.p, self.cfg.trainer
        if self.order is None:
            self.epoch_images()
        rows = slice(b * self.bs, (b + 1) * self.bs)
        idx, mask = self.order[rows], self.mask[rows]
        if (p.step + 1) % t.log_every == 0:
            with torch.no_grad(), seeded(step_seed(s.seed, p.step), s.device):
                bce = elbo_terms(s.vae, self.x_epoch[idx], self.objective, mask=mask)["bce"]
            s.meter.add_sums(("bce",), (bce * mask).sum()[None], mask.sum())
        s.meter.add_sums(*self.train_step(self.x_epoch, idx, mask))
        p.step, p.batch = p.step + 1, b + 1

    def progress_note(self, steps_per_second: float) -> str:
        """Images/s, and the loss of the last train/* point (read then: no sync here)."""
        loss = f", loss {self.last_loss:.4g}" if self.last_loss is not None else ""
        return f" ({steps_per_second * self.bs:.0f} images/s{loss})"

    def log_train(self, bar: tqdm) -> None:
        """Write the means since the last point as train/* (one meter across epochs, saved in
        the checkpoint: a resumed run writes the same points), then start a new window."""
        means = self.s.meter.means()
        if not math.isfinite(means["loss"]):
            bad = [k for k, v in means.items() if k not in ("loss", "elbo") and not math.isfinite(v)]
            raise NonFiniteError(f"non-finite {', '.join(bad) or 'loss'} at epoch "
                                 f"{self.p.epoch + 1}, step {self.p.step}; {self.hint()}")
        if "bce" in means:  # measured on the window's logging step only
            means["bce_last_batch"] = means.pop("bce")
        self.runlog.scalars("train", means, self.p.step)
        self.last_loss = means["loss"]
        bar.set_postfix(loss=f"{means['loss']:.2f}")
        self.s.meter = Meter()

    def end_epoch(self, epoch_seconds: float) -> None:
        """After a whole epoch: the test-set terms, pictures, the checkpoint; after a part of
        one (a stop request): the checkpoint only."""
        s, p, t = self.s, self.p, self.cfg.trainer
        if p.batch < self.steps_per_epoch:
            self.halt_if_asked()
        p.epoch, p.perm, p.batch = p.epoch + 1, None, 0
        lr = s.opt.param_groups[0]["lr"]  # the epoch's (the schedule moves it for the next)
        with warnings.catch_warnings():  # a captured step updates Adam's state functionally,
            warnings.filterwarnings(  # unseen by the scheduler's optimizer.step() counter
                "ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            s.sched.step()
        self.train_step.set_lr()
        started = time.perf_counter()
        with phase(f"epoch {p.epoch}/{t.epochs}: the test set's terms", t.progress_seconds):
            test = evaluate(s.vae, s.data.test, self.objective, t.eval_batch_size,
                            self.cfg.eval.seed, t.batch_size)
        self.runlog.scalars("train", {"lr": lr}, p.step)
        times = {"epoch_seconds": epoch_seconds, "test_eval_seconds": time.perf_counter() - started}
        if (compiled := self.train_step.compile_seconds) is not None:  # within epoch_seconds
            times["compile_seconds"], self.train_step.compile_seconds = compiled, None
        self.runlog.scalars("time", times, p.step)
        if not math.isfinite(test["loss"]):
            raise NonFiniteError(f"non-finite test loss after epoch {p.epoch}; {self.hint()}")
        self.runlog.scalars("test", test, p.step)
        self.runlog.update_split("test", test, p.step)
        log.info("epoch %d/%d: test elbo %.3f = log p(x|z) %.3f - kl %.3f nats per image, mse "
                 "%.5f per pixel; the loss as written %.4g (%s)", p.epoch, t.epochs, test["elbo"],
                 test["log_px_z"], test["kl"], test["mse"], test["loss"], self.objective.scale())
        if p.epoch < t.epochs and p.epoch % t.pictures_every == 0:
            with phase(f"epoch {p.epoch}/{t.epochs}: pictures", t.progress_seconds):
                write_pictures(s.vae, s.data, self.runlog, p.step)
        self.checkpoint("running")

    def finish(self) -> dict[str, Any]:
        """The end-of-run evaluation (the trained state is already saved), then the last
        checkpoint and record."""
        s = self.s
        try:
            evaluate_run(s.vae, s.data, self.cfg, self.runlog, self.p.step, poll=self.stop.check)
        except Interrupted:
            self.checkpoint("interrupted")
            raise
        log.info("%s", summary(self.runlog.metrics, s.run_dir, s.vae.latent_dim))
        # TensorBoard lists the columns marked as differing first (each group by name): in a
        # sweep what it varies, else what defines the experiment
        lead = self.compare if self.swept else DEFINING
        self.runlog.hparams(hparams(self.cfg, s.seed), hparam_columns(self.compare, self.swept),
                            HEADLINE,
                            first=lead, trial=s.run_dir.name)
        self.checkpoint("finished")
        log.info("finished %s", s.run_dir)
        return self.runlog.metrics

    # -- records --------------------------------------------------------------------------------
    def checkpoint(self, status: str) -> None:
        """Save the checkpoint, then record the same status and progress in metrics.json (in
        that order: metrics.json never claims more than the checkpoint holds). A pending stop
        request makes the status `interrupted`."""
        if status == "running" and self.stop.requested:
            status = "interrupted"
        self.s.save(status)
        self.record(status)

    def record(self, status: str, **extra: Any) -> None:
        p = self.p
        self.runlog.update(status=status, epoch=p.epoch, step=p.step, seed=self.s.seed,
                           train_seconds=round(p.seconds, 3),
                           wall_seconds=round(self.s.wall_seconds, 3), **extra)

    def halt_if_asked(self) -> None:
        """On a pending stop request: checkpoint where we are, then raise Interrupted."""
        if self.stop.requested:
            self.checkpoint("interrupted")
            self.stop.check()

    def hint(self) -> str:
        lik_hint = self.s.vae.likelihood.nonfinite_hint()
        lr, now = self.cfg.optimizer["lr"], self.s.opt.param_groups[0]["lr"]
        at = f", {now:g} at this point of the schedule" if now != lr else ""
        fix = lik_hint or f"try a smaller optimizer.lr (now {lr:g}{at})"
        return f"the last good checkpoint is kept; {fix}"
