"""Launchers that settle every job of a sweep: they wait for all of them, print one `error:`
line for each job that failed with no line of its own, and record each job's exit status in
the command's task function (`vaerun.cli.TrainTask.codes`), of which `vaerun train -m` exits
with the worst."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Joblib
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _Local
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Slurm

log = logging.getLogger(__name__)


def record(launcher, code: int) -> None:
    """A job's exit status, into the codes of the task function the launcher runs."""
    codes = getattr(launcher.task_function, "codes", None)
    if codes is not None:
        codes.append(code)


def settle(launcher, returns: Sequence[JobReturn], first: int) -> list[JobReturn]:
    """Each job's exit status recorded (`record`); a job that raised (no status of its own)
    gets a line and status 1. Returns them all as completed, so that Hydra's sweeper does not
    stop at the first failure with a traceback."""
    settled = []
    for i, r in enumerate(returns):
        if r.status == JobStatus.FAILED:
            # the exception, as JobReturn's own field holds it (its property would re-raise it,
            # after a line on stderr of its own)
            e = r._return_value
            where = r.hydra_cfg.hydra.runtime.output_dir if r.hydra_cfg is not None else "?"
            print(f"error: job {first + i} ({where}) failed: {type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
            code = 1
        else:
            code = r.return_value if isinstance(r.return_value, int) else 0
        record(launcher, code)
        r.status, r.return_value = JobStatus.COMPLETED, code
        settled.append(r)
    return settled


class JoblibLauncher(_Joblib):
    """hydra/launcher=joblib: jobs in parallel worker processes (one thread each by default)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        return settle(self, super().launch(job_overrides, initial_job_idx), initial_job_idx)


def _error_line(job, exc: Exception) -> str:
    """A failed submitit job's own `error:` line (from its stderr), else the exception's."""
    try:
        text = job.stderr() or ""
    except Exception:  # noqa: BLE001 (no log to read)
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("error: ")]
    if lines:
        return lines[-1][len("error: "):]
    last = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {last[-1] if last else ''}"


class _Settled:
    """submitit's launch, but waiting for every job and settling each (not raising at the
    first failed one while the others run on unwatched)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        submitted = self.submit(job_overrides, initial_job_idx)
        returns = []
        for i, job in enumerate(submitted):
            try:
                returns.append(job.results()[0])
            except Exception as e:  # noqa: BLE001 (FailedJobError, UncompletedJobError, ...)
                print(f"error: job {initial_job_idx + i} ({' '.join(job_overrides[i])}) "
                      f"failed: {_error_line(job, e)}; its log: {job.paths.stderr}",
                      file=sys.stderr)
                record(self, 1)
        return settle(self, returns, initial_job_idx)

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """hydra-submitit-launcher's launch up to the submission (its code, unchanged)."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = self.params
        init_params = {"folder": params["submitit_folder"]}
        specific = {"max_num_timeout"}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                            if k in specific})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items()
                                      if k not in specific | {"submitit_folder"}})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params, strict=True))


class LocalLauncher(_Settled, _Local):
    """hydra/launcher=submitit_local: each job its own process, through submitit."""


class SlurmLauncher(_Settled, _Slurm):
    """hydra/launcher=slurm: each job a SLURM job, through submitit."""
