"""The training loop: config -> data -> model -> ELBO -> Adam steps -> logs and checkpoints.

Data sits in memory on the device; each epoch draws a seeded permutation and slices batches
from it. Per-step terms are summed on the device and read back every `trainer.log_every` steps.
Every epoch ends with the test-set ELBO terms (TensorBoard + metrics.json) and a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from tqdm import tqdm

from vaerun import checkpoint
from vaerun.atomic import read_json
from vaerun.config import RunConfig
from vaerun.data import Dataset
from vaerun.errors import ConfigError, Interrupted, NonFiniteError, UserError
from vaerun.evaluate import evaluate_run, write_pictures
from vaerun.likelihoods import Likelihood
from vaerun.logs import RunLog
from vaerun.model import VAE
from vaerun.objective import Meter, elbo_terms, evaluate

log = logging.getLogger("vaerun")

GUARDED = ("log_px_z", "kl", "sigma")  # the terms named when the loss goes non-finite


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "CUDA is not available here; use "
                          "trainer.device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here; use cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop checks after each step (a second one aborts)."""
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["signum"] is not None:
            raise KeyboardInterrupt
        flag["signum"] = signum
        log.warning("signal %d: finishing this step, then writing the checkpoint", signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps so far
    batch: int = 0  # next batch within the current epoch
    perm: torch.Tensor | None = None  # the current epoch's data order
    seconds: float = 0.0  # training time so far, resumes included


def explain(cfg: RunConfig, data: Dataset, lik: Likelihood) -> None:
    """One-time notes on what the chosen likelihood really is for this data."""
    if lik.binary_only and not data.binary:
        log.warning("likelihood=%s on grey values: log p(x|z) = -BCE is not a normalised density "
                    "on [0, 1], so its nats are not a log-likelihood of this data; use "
                    "likelihood=continuous_bernoulli or dataset=mnist_binary", lik.name)
    if getattr(cfg.likelihood, "reduction", "sum") == "mean":
        log.warning("likelihood.reduction=mean: the loss is F.mse_loss(x_hat, x) (mean over "
                    "pixels) + KL, which is a Gaussian with sigma^2 = D/2 = %g (sigma = %.4g); "
                    "likelihood.sigma is ignored and log_px_z, elbo are those of that model",
                    data.dim / 2, math.sqrt(data.dim / 2))


def build(cfg: RunConfig, device: torch.device) -> tuple[Dataset, VAE]:
    data = Dataset.lookup(cfg.dataset.name)(cfg.dataset, device)
    lik = Likelihood.lookup(cfg.likelihood.name)(cfg.likelihood, data.dim)
    return data, VAE(cfg.model, lik, data.image_shape).to(device)


def train(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train one run in `run_dir`; returns its metrics.json content."""
    t = cfg.trainer
    run_dir = Path(run_dir)
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        # bit-identical reruns on GPU too (CPU kernels already are, at a fixed thread count)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed = t.seed if t.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    torch.manual_seed(seed)

    data, vae = build(cfg, device)
    explain(cfg, data, vae.likelihood)
    opt = instantiate(cfg.optimizer, _partial_=True)(vae.param_groups(cfg.optimizer["lr"]))
    gen = data.generator(seed)
    progress = Progress()

    ckpt_path = checkpoint.checkpoint_path(run_dir)
    resumed = ckpt_path.exists()
    if resumed:
        if not t.resume:
            raise UserError(f"{run_dir} already holds a run; add trainer.resume=true to continue "
                            "it, or choose another hydra.run.dir")
        state = checkpoint.load(ckpt_path, device)
        changed = checkpoint.config_changes(state["config"], cfg.plain)
        if changed:
            raise UserError(f"the checkpoint in {run_dir} is from another config (differs in "
                            f"{', '.join(changed)}); resume with its overrides or use another "
                            "hydra.run.dir")
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        gen.set_state(state["rng"]["data"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        seed = state["seed"]
        progress = Progress(state["epoch"], state["step"], state["batch"], state["perm"],
                            state["seconds"])
        if state["status"] == "finished" and progress.epoch >= t.epochs:
            log.info("%s is already finished (%d epochs); nothing to do", run_dir, progress.epoch)
            return read_json(run_dir / "metrics.json")
        log.info("resuming %s at epoch %d, step %d", run_dir, progress.epoch, progress.step)

    runlog = RunLog(run_dir, purge_step=progress.step + 1 if resumed else None)

    def save(status: str) -> None:
        rng = {"torch": torch.get_rng_state(), "data": gen.get_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        checkpoint.save(ckpt_path, {
            "model": vae.state_dict(), "optimizer": opt.state_dict(), "rng": rng,
            "epoch": progress.epoch, "step": progress.step, "batch": progress.batch,
            "perm": progress.perm, "seconds": progress.seconds, "seed": seed,
            "status": status, "config": cfg.plain,
        })

    def record(status: str, **extra: Any) -> None:
        runlog.update(status=status, epoch=progress.epoch, step=progress.step,
                      train_seconds=round(progress.seconds, 3), seed=seed, **extra)

    if not resumed:
        save("running")  # a last good checkpoint exists from the first step on
        runlog.layout()
    record("running")

    n, bs = len(data.train), t.batch_size
    steps_per_epoch = math.ceil(n / bs)
    check_every = 1 if device.type == "cpu" else t.log_every  # host syncs are free on CPU only
    log.info("training %s: %d images, %d epochs of %d steps, on %s (%d threads)", run_dir, n,
             t.epochs, steps_per_epoch, device, torch.get_num_threads())
    # optional: on this project's CPU it gave no reliable gain (README, Performance)
    terms_of = torch.compile(elbo_terms) if t.compile else elbo_terms
    vae.train()
    try:
        with stop_requests() as stop:
            for epoch in range(progress.epoch, t.epochs):
                if progress.perm is None:
                    progress.perm = torch.randperm(n, generator=gen, device=device)
                    progress.batch = 0
                meter = Meter()
                bar = tqdm(total=steps_per_epoch, initial=progress.batch, disable=None,
                           desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True)
                started = time.perf_counter()
                for b in range(progress.batch, steps_per_epoch):
                    x = data.batch(progress.perm[b * bs: (b + 1) * bs], gen)
                    logging_step = (progress.step + 1) % t.log_every == 0
                    terms = terms_of(vae, x, cfg.beta, logging_step)
                    loss = terms["loss"].mean()
                    if (progress.step + 1) % check_every == 0 and not torch.isfinite(loss):
                        raise NonFiniteError(_nonfinite_message(terms, epoch, progress.step + 1,
                                                                cfg))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    progress.step += 1
                    progress.batch = b + 1
                    meter.add(terms)
                    bar.update()
                    if progress.step % t.log_every == 0:
                        means = meter.means()
                        if not math.isfinite(means["loss"]):
                            raise NonFiniteError(_nonfinite_message(terms, epoch, progress.step,
                                                                    cfg))
                        runlog.scalars("train", means, progress.step)
                        bar.set_postfix(loss=f"{means['loss']:.2f}")
                        meter = Meter()
                    if stop["signum"] is not None:
                        break
                epoch_seconds = time.perf_counter() - started
                progress.seconds += epoch_seconds
                bar.close()
                if stop["signum"] is not None and progress.batch < steps_per_epoch:
                    save("interrupted")
                    record("interrupted")
                    raise Interrupted(stop["signum"])
                progress.epoch, progress.perm, progress.batch = epoch + 1, None, 0
                started = time.perf_counter()
                test = evaluate(vae, data.test, cfg.beta, t.eval_batch_size, cfg.eval.seed)
                runlog.scalars("time", {"epoch_seconds": epoch_seconds,
                                        "test_eval_seconds": time.perf_counter() - started},
                               progress.step)
                if not math.isfinite(test["loss"]):
                    raise NonFiniteError(f"non-finite test loss after epoch {epoch + 1}; "
                                         f"{_hint(cfg)}")
                runlog.scalars("test", test, progress.step)
                runlog.update_split("test", test)
                log.info("epoch %d/%d: test loss %.3f, elbo %.3f, log p(x|z) %.3f, kl %.3f, "
                         "mse %.5f (nats per image)", epoch + 1, t.epochs, test["loss"],
                         test["elbo"], test["log_px_z"], test["kl"], test["mse"])
                done = progress.epoch >= t.epochs
                if not done:
                    write_pictures(vae, data, runlog, progress.step)
                    status = "interrupted" if stop["signum"] is not None else "running"
                    record(status)
                    save(status)
                    if stop["signum"] is not None:
                        raise Interrupted(stop["signum"])
        final = evaluate_run(vae, data, cfg, runlog, progress.step)
        log.info("test: %s", ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
        runlog.hparams(hparams(cfg, seed), [k for k in runlog.metrics if k.startswith("test/")])
        record("finished")
        save("finished")
        log.info("finished %s", run_dir)
        return runlog.metrics
    except NonFiniteError as e:
        record("failed", error=str(e))
        raise
    finally:
        runlog.close()


def hparams(cfg: RunConfig, seed: int) -> dict[str, Any]:
    """The hyperparameters a sweep is compared by (HParams dashboard, vaerun report)."""
    lik = cfg.likelihood
    sigma = getattr(lik, "sigma", None)
    if getattr(lik, "reduction", "sum") == "mean":
        sigma = None
    return {
        "dataset": cfg.dataset.name, "likelihood": lik.name, "sigma": sigma,
        "variance": getattr(getattr(lik, "variance", None), "value", None),
        "beta": cfg.beta, "optimizer": cfg.optimizer["_target_"].rsplit(".", 1)[-1],
        "lr": cfg.optimizer["lr"], "model": cfg.model.name, "latent_dim": cfg.model.latent_dim,
        "seed": seed, "epochs": cfg.trainer.epochs,
    }


def _hint(cfg: RunConfig) -> str:
    lik = cfg.likelihood
    if getattr(lik, "variance", None) in ("per_pixel", "decoder") and lik.min_log_sigma is None:
        return ("the last good checkpoint is kept; per-pixel sigmas need a lower bound: set "
                "likelihood.min_log_sigma (e.g. -6), else sigma -> 0 on always-black pixels")
    return (f"the last good checkpoint is kept; try a smaller optimizer.lr "
            f"(now {cfg.optimizer['lr']:g})")


def _nonfinite_message(terms: dict[str, torch.Tensor], epoch: int, step: int,
                       cfg: RunConfig) -> str:
    bad = [k for k in GUARDED if k in terms and not bool(torch.isfinite(terms[k]).all())]
    what = ", ".join(bad) if bad else "loss"
    return f"non-finite {what} at epoch {epoch + 1}, step {step}; {_hint(cfg)}"
