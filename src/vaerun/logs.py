"""What a run writes beside its checkpoints: TensorBoard event files (every ELBO term, in nats
per image, at the global step) and `metrics.json` (the latest test value of every tag)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from vaerun.atomic import read_json, write_json

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        # purge_step: after a resume, TensorBoard drops the events a killed run wrote past its
        # checkpoint, so the curves continue without duplicate points.
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self.metrics_path = self.run_dir / "metrics.json"
        self.metrics: dict[str, Any] = {}
        if self.metrics_path.exists():
            try:
                self.metrics = read_json(self.metrics_path)
            except ValueError:
                log.warning("%s was unreadable; starting it anew", self.metrics_path)

    def scalars(self, split: str, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)

    def update(self, **entries: Any) -> None:
        """Merge entries into metrics.json and rewrite it atomically."""
        self.metrics.update(entries)
        write_json(self.metrics_path, self.metrics)

    def update_split(self, split: str, values: dict[str, float], **entries: Any) -> None:
        clean = {f"{split}/{k}": (v if math.isfinite(v) else None) for k, v in values.items()}
        self.update(**clean, **entries)

    def layout(self) -> None:
        """TensorBoard's Custom Scalars tab: the ELBO terms of each split on one chart."""
        charts = {
            f"ELBO terms ({split})": {
                "elbo = log_px_z - kl": ["Multiline", [f"{split}/elbo", f"{split}/log_px_z",
                                                       f"{split}/kl", f"{split}/nll_iwae"]],
                "Gaussian: log_px_z = sse_term + log_norm_term": [
                    "Multiline", [f"{split}/log_px_z", f"{split}/sse_term",
                                  f"{split}/log_norm_term"]],
                "sigma vs sqrt(mse)": ["Multiline", [f"{split}/sigma", f"{split}/sigma_optimal"]],
            }
            for split in ("test", "train")
        }
        self.writer.add_custom_scalars(charts)

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """Record this run's hyperparameters for TensorBoard's HParams dashboard, in this run's
        own event file (SummaryWriter.add_hparams would make a directory per call); the
        dashboard joins them with the runs' last test/* scalars."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: v for k, v in hparams.items() if v is not None}
        _, start, end = hparams_summary(clean, dict.fromkeys(metric_tags, 0.0))
        self.writer.file_writer.add_summary(start)
        self.writer.file_writer.add_summary(end)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
