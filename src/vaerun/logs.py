"""What a run writes beside its checkpoints: TensorBoard event files (every ELBO term, in nats
per image, at the global step) and `metrics.json` (the latest test value of every tag)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vaerun.rundir import RunDir

log = logging.getLogger(__name__)
progress_log = logging.getLogger("vaerun")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@contextlib.contextmanager
def phase(what: str, seconds: float | None) -> Iterator[None]:
    """A line as `what` begins and, where stderr is no terminal (a file, a pipe, SLURM), one at
    least every `seconds` (1 s at the most often) while it lasts: no silence in a log for the
    length of an evaluation or a compile."""
    progress_log.info("%s", what)
    if seconds is None or sys.stderr.isatty():
        yield
        return
    done, started = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(max(seconds, 1.0)):
            progress_log.info("%s: %s so far", what, _duration(time.perf_counter() - started))

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()


class ProgressLines:
    """Where stderr is no terminal (a file, a pipe, nohup, a SLURM job's log), tqdm's bar
    draws nothing: instead a plain log line every `seconds` (none if None; with 0, one at each
    update), with how far `what` has got, its rate and the time left, written by a thread of
    its own, so a slow step delays no line. `note()` adds to the line. Close it when done."""

    def __init__(self, what: str, total: int, unit: str, seconds: float | None, done: int = 0,
                 note: Callable[[float], str] | None = None):
        self.on = seconds is not None and not sys.stderr.isatty()
        self.what, self.total, self.unit, self.seconds = what, total, unit, seconds or 0.0
        self.first, self.done, self.started, self.note = done, done, time.perf_counter(), note
        self._stop = threading.Event()
        if self.on and self.seconds > 0:
            self._beat = threading.Thread(target=self._lines, daemon=True)
            self._beat.start()

    def _lines(self) -> None:
        self.line()  # where it starts
        while not self._stop.wait(self.seconds):
            self.line()

    def update(self, done: int) -> None:
        self.done = done
        if self.on and self.seconds == 0:
            self.line()

    def line(self) -> None:
        done, now = self.done, time.perf_counter()
        rate = (done - self.first) / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate > 0 else math.inf
        extra = self.note(rate) if self.note else ""
        progress_log.info("%s: %d/%d %s, %s left%s", self.what, done, self.total, self.unit,
                          _duration(left) if math.isfinite(left) else "?", extra)

    def close(self) -> None:
        self._stop.set()
        if hasattr(self, "_beat"):
            self._beat.join()


class RunLog:
    """metrics.json holds the latest value of every test/* tag, with the step it belongs to
    under `steps`: a value from an earlier step than the newest is dropped, so a metric of an
    older model (an IWAE of epoch 5 in a run now at epoch 6) never passes for the current one."""

    def __init__(self, run_dir: Path | RunDir, purge_step: int | None = None):
        self.rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.rd.path
        self.metrics: dict[str, Any] = self.rd.metrics()
        # purge_step: after a resume, TensorBoard drops the events a killed run wrote past its
        # checkpoint, so the curves continue without duplicate points.
        self.purge_step, self._writer = purge_step, None

    @property
    def writer(self):  # noqa: ANN201 (SummaryWriter): its event file made at the first write
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir), purge_step=self.purge_step)
        return self._writer

    def scalars(self, split: str, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)

    def update(self, **entries: Any) -> None:
        """Merge entries into metrics.json and rewrite it atomically."""
        self.metrics.update(entries)
        self.rd.write_json(self.rd.METRICS, self.metrics)

    def update_split(self, split: str, values: dict[str, float], step: int,
                     **entries: Any) -> None:
        """Record values as `split/*` at `step`, dropping this split's values of older steps."""
        clean = {f"{split}/{k}": (v if math.isfinite(v) else None) for k, v in values.items()}
        steps = dict(self.metrics.get("steps") or {})
        steps.update(dict.fromkeys(clean, step))
        for key, at in list(steps.items()):
            if key.startswith(f"{split}/") and at < step:
                self.metrics.pop(key, None)
                del steps[key]
        self.update(**clean, steps=steps, **entries)

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
                "per-pixel sigma: geometric means, learned vs optimal": [
                    "Multiline", [f"{split}/sigma_geomean", f"{split}/sigma_optimal_geomean"]],
            }
            for split in ("test", "train")
        }
        self.writer.add_custom_scalars(charts)

    def hparams(self, values: dict[str, Any], columns: dict[str, type],
                metric_tags: list[str], first: list[str] | tuple = (), trial: str = "") -> None:
        """Record this run's hyperparameters for TensorBoard's HParams dashboard, in this run's
        own event file (SummaryWriter.add_hparams would make a directory per call), through
        TensorBoard's own hparams API: the experiment (every column any run can have, `first`,
        the keys the command varied, leading; the metric columns in `metric_tags` order:
        without it TensorBoard lists every scalar tag) and this run's values, booleans as
        booleans, as the trial `trial` (a short name). The dashboard joins them with the runs'
        last scalars of those tags."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp2

        kinds = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64,
                 str: api_pb2.DATA_TYPE_STRING}
        experiment = hp2.hparams_config_pb(hparams=[hp2.HParam(k) for k in columns],
                                           metrics=[hp2.Metric(tag) for tag in metric_tags])
        # each column's type, and `differs` on the varied keys: TensorBoard lists those first
        meta = experiment.value[0].metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
        for info in data.experiment.hparam_infos:
            info.type, info.differs = kinds[columns[info.name]], info.name in first
        meta.content = data.SerializeToString()
        session = hp2.hparams_pb({k: v for k, v in values.items() if k in columns},
                                 trial_id=trial or None)
        for summary in (experiment, session):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, quiet: bool = False) -> None:
        """Flush and close the event file, if one was made; `quiet`: a write error here is not
        raised (another error is already on its way out)."""
        try:
            if self._writer is not None:
                self._writer.close()
        except OSError:
            if not quiet:
                raise
