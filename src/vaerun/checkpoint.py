"""Checkpoints: `checkpoints/last.pt` holds model, optimiser, progress (epoch, step, position in
the epoch's data order), every RNG state and the config, so a resumed run continues exactly.
Only tensors and plain containers, so `torch.load(weights_only=True)` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaerun.atomic import write_atomic
from vaerun.errors import UserError

# Keys that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("trainer.resume", "trainer.epochs", "trainer.device", "trainer.threads",
                     "trainer.log_every", "trainer.eval_batch_size", "trainer.compile", "eval.")


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint whole."""
    write_atomic(path, lambda f: torch.save(state, f))


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}; train a run first (vaerun train)") from None
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to "
                        "start the run again") from None


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
