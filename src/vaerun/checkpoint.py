"""Checkpoints: `checkpoints/last.pt` holds model, optimiser, progress (epoch, step, position in
the epoch's data order), every RNG state and the config, so a resumed run continues exactly.
Only tensors and plain containers, so `torch.load(weights_only=True)` reads it. Its format
(`snapshot`, `resume_into`) lives here beside its I/O.

Every random stream it holds is a CPU one (the data order's generator and torch's CPU state):
a run may resume on another device type. A CUDA run also keeps torch's CUDA state, restored
where it resumes on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaerun.atomic import write_atomic
from vaerun.errors import UserError

# Keys that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("trainer.resume", "trainer.epochs", "trainer.device", "trainer.threads",
                     "trainer.log_every", "trainer.eval_batch_size", "trainer.compile",
                     "trainer.progress_seconds", "trainer.pictures_every", "eval.")


KEYS = ("model", "optimizer", "rng", "epoch", "step", "batch", "perm", "seconds", "seed",
        "status", "config")  # what every checkpoint holds


@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps so far
    batch: int = 0  # next batch within the current epoch
    perm: torch.Tensor | None = None  # the current epoch's data order
    seconds: float = 0.0  # training time so far, resumes included


def snapshot(*, model: nn.Module, optimizer: torch.optim.Optimizer, order: torch.Generator,
             progress: Progress, device: torch.device, **fields: Any) -> dict[str, Any]:
    """The checkpoint of a run: its model, optimiser, progress and random streams, plus
    `fields` (seed, status, meter, wall_seconds, config)."""
    p = progress
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    rng = {"torch": torch.get_rng_state(), "data": order.get_state(), "cuda": cuda}
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng,
            "epoch": p.epoch, "step": p.step, "batch": p.batch,
            "perm": None if p.perm is None else p.perm.cpu(), "seconds": p.seconds,
            "device": device.type, **fields}


def resume_into(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                order: torch.Generator, device: torch.device) -> Progress:
    """Load a checkpoint's model, optimiser and random streams; its progress, perm on
    `device`. torch's CUDA stream is restored where the run was and is on CUDA."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    order.set_state(state["rng"]["data"].cpu())
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    perm = state["perm"]
    return Progress(state["epoch"], state["step"], state["batch"],
                    None if perm is None else perm.to(device), state["seconds"])


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint whole."""
    write_atomic(path, lambda f: torch.save(state, f))


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}; train a run first (vaerun train)") from None
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to "
                        "start the run again") from None
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else ["all"]
    if not missing and not isinstance(state["config"], dict):
        missing = ["a config"]
    if missing:
        raise UserError(f"checkpoint {path} is not a vaerun checkpoint (it lacks "
                        f"{', '.join(missing)}); delete it to start the run again")
    return state


def restore(path: Path, apply: Callable[[], Any]) -> None:
    """Run `apply()` (which loads a checkpoint's states into a model, optimizer, ...); a
    checkpoint with missing keys or wrong shapes becomes one UserError naming the file."""
    try:
        apply()
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} does not fit this run ({first[:200]}); delete it to "
                        "start the run again, or use the config it was written with") from None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two configs, except those a resume may change."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k)
            and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in RESUMABLE_CHANGES)]
