"""A run assembled from its typed config: the config's last checks (device, optimizer, loss,
memory), the data and the model with its likelihood, the optimizer and its schedule, and the
start-or-resume decision. `vaerun train` and `vaerun eval` build runs here; it imports the part
modules, so their registries are filled before `checked` looks them up.

A checkpoint (`RunDir.CHECKPOINT`) holds model, optimizer, schedule, progress (epoch, step,
position in the epoch's data order), every random stream, the config and a digest of the images
(`Dataset.digest`: a resume or an evaluation on other images is refused): only tensors and plain
containers, so `torch.load(weights_only=True)` reads it. Its streams are CPU ones (the data
order's generator, torch's CPU state), so a run may resume on another device type; a CUDA run
also keeps torch's CUDA state, restored where it resumes on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaerun import config, images, optim, quality, slurm  # noqa: F401 (images: datasets)
from vaerun.config import Recon, RunConfig, require
from vaerun.data import Dataset
from vaerun.elbo import Meter, Objective, step_bytes
from vaerun.errors import ConfigError, DataError, Refused, UserError
from vaerun.likelihoods import Likelihood
from vaerun.model import VAE
from vaerun.rundir import RunDir
from vaerun.runtime import applied, free_memory, resolve_device, threads

log = logging.getLogger("vaerun")
MOVED = "dataset.root"  # may be given anew at evaluation and resume: the images are checked


@functools.cache
def installed_parts() -> None:
    """Import the parts other installed packages add (their classes register themselves as
    vaerun's own do): each entry point of group `vaerun.parts` names a module. It is code you
    installed, as vaerun is; a config names only what is registered (docs/python.md)."""
    for ep in entry_points(group="vaerun.parts"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 (whatever a package's import raises)
            raise UserError(f"the part module {ep.value} (entry point {ep.name} of the installed "
                            f"package {getattr(ep.dist, 'name', '?')}) failed to import: "
                            f"{type(e).__name__}: {e}; fix or uninstall that package") from None


def checked(cfg: DictConfig, training: bool = True) -> RunConfig:
    """The typed, fully checked config of a run. Training also checks the optimizer (by
    building one, which imports torch._dynamo: an evaluation, which never steps, skips it) and
    that a training step fits in the device's free memory."""
    installed_parts()
    rc = config.typed(cfg)
    device = resolve_device(rc.trainer.device)  # CUDA asked for but absent fails here
    threads(rc.trainer.threads)  # SLURM_CPUS_PER_TASK, where it sets them, checked too
    if training:
        optim.optimizer_kwargs(rc.optimizer)
    require(rc.loss.recon != Recon.sse or rc.likelihood.name == "gaussian", "loss.recon", "sse",
            "the squared error is the -log p of a Gaussian decoder with one fixed sigma: add "
            "likelihood=gaussian (its sigma is then the one the loss implies), or use loss.recon=nll")
    sizes = Dataset.lookup(rc.dataset.name).sizes
    n = rc.dataset.n_train or (sizes[0] if sizes else None)
    require(n is None or rc.trainer.batch_size <= n, "trainer.batch_size", rc.trainer.batch_size,
            f"must be at most the {n} training images (dataset.n_train)")
    shape = Dataset.lookup(rc.dataset.name).shape_of(rc.dataset)
    if shape is not None:
        objective(rc, math.prod(shape)).check(rc.trainer.batch_size)
        require(rc.model.name != "conv" or shape[1] % 4 == 0 and shape[1] == shape[2],
                "model", "conv", f"model=conv takes square images whose side is a multiple of 4 "
                f"(28, 32, 64, ...), not {shape[1]}x{shape[2]}: set dataset.size, or model=mlp")
        if rc.eval.inception_weights and rc.eval.quality_images and not quality.by_digits(
                rc.dataset.name, shape):
            quality.check_inception(rc.eval.inception_weights)
    if training and shape is not None:
        check_memory(rc, device)
    return rc


def check_memory(cfg: RunConfig, device: torch.device, have: int | None = None) -> None:
    """Refuse a run whose training step would not fit in the device's free memory: parameters,
    gradients, optimizer state and the checkpoint's copy of them, the activations one batch
    keeps for the backward pass (counted on the meta device: nothing is allocated), and the
    train and test images. A folder of your own images is not counted before it is read: it is
    taken as 70,000 and 10,000 images, unless dataset.n_train and dataset.n_test say. `have`:
    the bytes free (the device's, by default)."""
    kind = Dataset.lookup(cfg.dataset.name)
    d = math.prod(shape := kind.shape_of(cfg.dataset))
    with applied(device, None), torch.device("meta"):  # the run's dtype: float32
        vae = VAE(cfg.model, Likelihood.lookup(cfg.likelihood.name)(cfg.likelihood, d,
                                                                     cfg.model.link.value), shape)
        steps = step_bytes(vae, objective(cfg, d), cfg.trainer.batch_size)
    n = sum(p.numel() for p in vae.parameters())
    n_train, n_test = cfg.dataset.n_train or (kind.sizes or (70000,))[0], \
        cfg.dataset.n_test or (kind.sizes or (0, 10000))[1]
    data = d * (kind.train_bytes * n_train + 4 * n_test)  # the test set is float32
    need = 28 * n + steps + data
    have = free_memory(device) if have is None else have
    if need > have:
        dims = {f"model.{k}": v for k, v in vars(cfg.model).items() if isinstance(v, int)}
        key = "dataset.n_train" if 2 * data > need else max(dims, key=dims.get)
        raise ConfigError(key, {**dims, "dataset.n_train": n_train}[key], f"a "
                          f"training step would hold about {need / 1e9:.3g} GB ({n:.3g} parameters "
                          "with their gradients, optimizer state and checkpoint, a batch's "
                          f"activations, and {data / 1e9:.3g} GB of images) and this {device.type} "
                          f"has {have / 1e9:.3g} GB free; make the model, trainer.batch_size or "
                          "dataset.n_train smaller" + ("" if cfg.dataset.n_train or kind.sizes else
                                                       " (a folder's images are counted as 70000 "
                                                       "before they are read: give their number)"))


def build(cfg: RunConfig, device: torch.device, new: bool = True) -> tuple[Dataset, VAE]:
    """The data (in memory on `device`) and the VAE with its likelihood, untrained. With the
    squared error for loss (loss.recon=sse) the Gaussian's σ is the one the loss implies.
    Only a `new` run downloads missing data: a resumed or evaluated one takes its config from
    its records (checkpoint, overrides), user input that must not choose where a download
    writes. A long load (the first decoding of a folder of images) polls `data.POLL`."""
    try:
        data = Dataset.lookup(cfg.dataset.name)(
            cfg.dataset if new else dataclasses.replace(cfg.dataset, download=False), device)
    except DataError as e:
        later = ("; a resumed or evaluated run (trainer.resume=true, vaerun eval) downloads "
                 "nothing, as its records may not choose where a download writes: a new run "
                 "with this dataset.root downloads it")
        raise DataError(f"{e}{later if not new and cfg.dataset.download else ''}") from None
    except (MemoryError, torch.OutOfMemoryError) as e:  # more images than the count checked
        raise ConfigError("dataset.n_train", cfg.dataset.n_train, f"the images of dataset="
                          f"{cfg.dataset.name} do not fit in this {device.type}'s free memory "
                          f"({type(e).__name__}); set dataset.n_train (and n_test) smaller, or "
                          "trainer.device=cpu") from None
    lik_cfg = cfg.likelihood
    if cfg.loss.recon == Recon.sse:
        implied = objective(cfg, data.dim).implied(cfg.trainer.batch_size)["implied_sigma"]
        lik_cfg = dataclasses.replace(lik_cfg, sigma=implied)
    lik = Likelihood.lookup(lik_cfg.name)(lik_cfg, data.dim, cfg.model.link.value)
    vae = VAE(cfg.model, lik, data.image_shape).to(device)
    if cfg.model.bias_from_data:
        vae.bias_from_data(data.train.mean(0), cfg.model.link)
    return data, vae


def objective(cfg: RunConfig, pixels: int) -> Objective:
    """The run's loss as written, for images of `pixels` pixels."""
    return Objective(cfg.loss, cfg.beta, pixels, cfg.model.latent_dim)


@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far
    batch: int = 0  # next batch within the current epoch
    perm: torch.Tensor | None = None  # the current epoch's data order
    seconds: float = 0.0  # training time so far, resumes included


@dataclass
class Session:
    """Everything a training run holds: what its checkpoint saves and restores."""

    cfg: RunConfig
    rd: RunDir
    device: torch.device
    data: Dataset
    vae: VAE
    opt: torch.optim.Optimizer
    sched: Any  # the lr schedule over epochs (a torch.optim.lr_scheduler)
    gen: torch.Generator  # the data order's random stream (on the CPU)
    seed: int
    progress: Progress = field(default_factory=Progress)
    resumed: bool = False
    status: str = "running"
    meter: Meter = field(default_factory=Meter)  # train/* terms since the last logged point
    opened: float = field(default_factory=time.perf_counter)  # when this command took it up
    wall_before: float = 0.0  # wall-clock seconds of earlier commands on this run (resumes)
    recorded: dict = field(default_factory=dict)  # the config its checkpoint holds (resumes)

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds spent on this run by vaerun train, resumes summed."""
        return self.wall_before + time.perf_counter() - self.opened

    @property
    def run_dir(self) -> Path:
        return self.rd.path

    def save(self, status: str) -> None:
        """Write the checkpoint (atomically); `status` is what it records the run as."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        p = self.progress
        self.rd.save_checkpoint({
            "model": self.vae.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": {"torch": torch.get_rng_state(),
                                                         "data": self.gen.get_state(), "cuda": cuda},
            "epoch": p.epoch, "step": p.step, "batch": p.batch,
            "perm": None if p.perm is None else p.perm.cpu(), "seconds": p.seconds,
            "device": self.device.type, "seed": self.seed, "status": status,
            "meter": self.meter.state(), "wall_seconds": self.wall_seconds,
            "config": self.cfg.plain, "data": self.data.digest})
        self.status = status

    def restore(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.gen.set_state(state["rng"]["data"].cpu())
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        perm = None if state["perm"] is None else state["perm"].to(self.device)
        n = len(self.data.train)
        if perm is not None and not torch.equal(perm.sort().values, torch.arange(n, device=perm.device)):
            raise ValueError(f"its data order is no order of the {n} training images")
        self.progress = Progress(state["epoch"], state["step"], state["batch"], perm,
                                 state["seconds"])
        self.seed, self.status = state["seed"], state["status"]
        self.meter = Meter.from_state(state.get("meter"), self.device)
        self.wall_before, self.resumed = state.get("wall_seconds", 0.0), True
        self.recorded = state["config"]

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.progress.epoch >= self.cfg.trainer.epochs


def config_changes(saved: dict, current: dict, digest: str | None = None) -> list[str]:
    """Keys whose values differ between two configs, except those a resume may change and,
    where the checkpoint holds a `digest` of its images (`same_data` then checks them), the
    folder they are read from (MOVED: the images moved, or a run is used on another machine)."""
    a, b = ({**config.defaults(c), **config.flat(c)} for c in (saved, current))  # a key newer
    free = set(config.free_keys(resume=True)) | ({MOVED} if digest else set())  # than the run:
    #                                                                             its default
    for c in (a, b):  # an earlier vaerun recorded a relative path as given
        c.update({k: os.path.abspath(os.path.expanduser(c[k])) for k in config.PATHS
                  if isinstance(c.get(k), str) and c[k]})
    a.setdefault("scheduler.name", "none")  # runs saved before schedules existed
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in free]


def resume_state(cfg: RunConfig, rd: RunDir, key: str = "hydra.run.dir") -> dict[str, Any] | None:
    """The checkpoint this run continues (None: a new run); Refused where it may not: a folder
    that holds a run without trainer.resume=true, a checkpoint of another config, or one past
    the epochs asked for. `key`: the folder's name in those lines, as the caller gave it."""
    if not rd.file(rd.CHECKPOINT).exists():
        return None
    if (restarted := slurm.restarts()) and not cfg.trainer.resume:
        log.info("SLURM restarted this job (restart %d): resuming %s from its checkpoint",
                 restarted, rd)
    elif not cfg.trainer.resume:
        raise Refused(f"{rd} already holds a run; add trainer.resume=true to continue it, or "
                      f"choose another {key}")
    state = rd.load_checkpoint()
    if changed := config_changes(state["config"], cfg.plain, state.get("data")):
        was, now = config.flat(state["config"]), config.flat(cfg.plain)
        say = lambda d, k: repr(d[k]) if k in d else "absent"  # noqa: E731
        diff = "; ".join(f"{k}: {say(was, k)} in it, {say(now, k)} now" for k in changed[:3]) + (
            "; ..." if len(changed) > 3 else "")
        raise Refused(f"the checkpoint in {rd} is from another config ({diff}); resume with the "
                      "values it was trained with (or the yaml of yours it was composed with, as "
                      f"it was then), or use another {key}")
    epoch, t = state["epoch"] + (1 if state["batch"] > 0 else 0), cfg.trainer
    before = config.flat(state["config"]).get("trainer.epochs")
    if before != t.epochs and optim.Scheduler.lookup(cfg.scheduler.name).over_epochs:
        raise Refused(f"the run in {rd} anneals its lr over trainer.epochs={before} (scheduler="
                      f"{cfg.scheduler.name}), so it cannot take trainer.epochs={t.epochs}: resume "
                      f"with trainer.epochs={before}, or start a new run")
    if state["status"] == "finished" and state["epoch"] > t.epochs:
        raise Refused(f"the run in {rd} finished {state['epoch']} epoch"
                      f"{'' if state['epoch'] == 1 else 's'}, more than "
                      f"trainer.epochs={t.epochs}; resume with trainer.epochs={state['epoch']} "
                      f"or more, or use another {key}")
    if state["status"] != "finished" and epoch > t.epochs:
        raise Refused(f"the checkpoint in {rd} has begun epoch {epoch} (step "
                      f"{state['step']}), past trainer.epochs={t.epochs}; resume with "
                      f"trainer.epochs={epoch} or more")
    return state


def start(cfg: RunConfig, run_dir: str | os.PathLike | RunDir) -> Session:
    """A new run in `run_dir`, or the run its checkpoint holds when `trainer.resume` allows
    (`resume_state`, before anything is built)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    state = resume_state(cfg, rd)
    device = resolve_device(cfg.trainer.device)
    seed = state["seed"] if state else cfg.trainer.seed
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    torch.manual_seed(seed)
    data, vae = build(cfg, device, new=state is None and not cfg.trainer.resume)
    opt = optim.make_optimizer(cfg.optimizer, vae.param_groups(cfg.optimizer["lr"]))
    sched = optim.Scheduler.lookup(cfg.scheduler.name).build(cfg.scheduler, opt, cfg.trainer.epochs)
    session = Session(cfg, rd, device, data, vae, opt, sched, torch.Generator().manual_seed(seed),
                      seed)
    if state is not None:
        same_data(state, data, rd)
        rd.fits(lambda: session.restore(state))
    return session


def same_data(state: dict[str, Any], data: Dataset, rd: RunDir) -> None:
    """Refused where the images are not those the checkpoint's run was trained on (a folder of
    your own images changed since): its numbers would be of other images, its test set could
    hold images it trained on. A checkpoint of an older vaerun has no digest."""
    if None not in (state.get("data"), data.digest) and state["data"] != data.digest:
        where = f" under dataset.root={data.cfg.root}" if data.cfg.root else ""
        raise Refused(f"the images of dataset={data.cfg.name}{where} are not those the run in {rd} was "
                      "trained on (added, removed or changed since); restore them as they were, "
                      "or train a new run")


def load_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None
                ) -> tuple[RunConfig, dict[str, Any]]:
    """A saved run's checked config, with `overrides` (eval.* and the keys that never change a
    result only) applied, and its checkpoint state; its records must agree with it."""
    rd = RunDir(run_dir)
    state = rd.load_checkpoint()
    free = config.free_keys()
    saved = rd.record(rd.CONFIG, lambda v: isinstance(v, dict), "a config")
    # (in what a resume may change they may differ: a resume refused as it began left Hydra's
    # record of its trainer.epochs, the checkpoint its own)
    if saved is not None and config_changes(
            OmegaConf.to_container(OmegaConf.create(saved), resolve=True), state["config"],
            state.get("data")):
        raise UserError(f"{rd.file(rd.CONFIG)} is not the checkpoint's config; restore it, or "
                        "delete it (the checkpoint holds the run's config)")
    rd.overrides()  # the record the report labels the run by: a list, or refused
    cfg = OmegaConf.create(state["config"])
    OmegaConf.set_struct(cfg, True)
    for key, value in (overrides or {}).items():
        require(key.startswith("eval.") or key in free or key == MOVED, key, value, "cannot "
                f"change at evaluation; only eval.*, {', '.join(free)} and {MOVED} (where the "
                "same images are now) can")
        require(key != MOVED or state.get("data") is not None, key, value, "this run's "
                "checkpoint, from an earlier vaerun, records no digest of its images to check "
                "them by; put them back where it was trained on them")
        try:  # an eval key newer than the run (its config lacks it) may be given too
            newer = key in {f"eval.{f.name}" for f in dataclasses.fields(config.EvalConfig)}
            with open_dict(cfg) if newer else contextlib.nullcontext():
                OmegaConf.update(cfg, key, value, merge=False)
        except Exception:  # noqa: BLE001 (OmegaConf's errors for a key it lacks)
            raise ConfigError(key, value, "not a key of this run's config") from None
    return checked(cfg, training=False), state


def load_run(run_dir: str | os.PathLike, cfg: RunConfig, state: dict[str, Any]
             ) -> tuple[Dataset, VAE]:
    """The data and trained VAE of a saved run (`load_config`'s config and state)."""
    rd, (data, vae) = RunDir(run_dir), build(cfg, resolve_device(cfg.trainer.device), new=False)
    same_data(state, data, rd)
    rd.fits(lambda: vae.load_state_dict(state["model"]))
    return data, vae
