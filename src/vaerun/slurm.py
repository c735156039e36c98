"""What a run needs to know of SLURM, from its environment and `scontrol` (nothing here when a
run is not a SLURM job).

- A job that SLURM (or submitit, through SLURM) restarts has SLURM_RESTART_COUNT > 0: its
  run resumes from its checkpoint with no flag (vaerun.assemble.start).
- On SIGTERM, a job still RUNNING is being preempted with a grace time: SLURM would end it as
  FAILED if it exits by itself, so after its checkpoint it requeues itself (as PyTorch
  Lightning does). A job that `scancel` or `scontrol requeue` is ending is already COMPLETING:
  it just saves and exits (and a requeue brings it back).
- `trainer.threads` defaults to SLURM_CPUS_PER_TASK.
"""

from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger("vaerun")


def job_id() -> str | None:
    """This job's id; for a job array's task, ARRAYID_TASKID (the bare SLURM_JOB_ID of a task
    names the whole array to scontrol)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def restarts() -> int:
    """How many times SLURM has restarted this job (0 outside SLURM)."""
    return _env_int("SLURM_RESTART_COUNT") or 0


def cpus_per_task() -> int | None:
    """The CPUs SLURM gave each task (None outside SLURM), checked as trainer.threads is."""
    from vaerun.config import require_threads

    value = os.environ.get("SLURM_CPUS_PER_TASK")
    if value is None:
        return None
    n = int(value) if value.strip().isdigit() and len(value) < 6 else value
    require_threads("SLURM_CPUS_PER_TASK", n)
    return n


def job_state() -> str | None:
    """The job's state as `scontrol show job` has it now (RUNNING, COMPLETING, ...)."""
    if job_id() is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id()], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), None)


def requeue_if_preempted() -> bool:
    """After a SIGTERM: if this job is still RUNNING (a preemption's grace time, not a cancel),
    requeue it; True if it was requeued."""
    if job_state() != "RUNNING":
        return False
    done = subprocess.run(["scontrol", "requeue", job_id()], capture_output=True, text=True)
    if done.returncode == 0:
        log.warning("preempted: the checkpoint is written and SLURM job %s is requeued; it "
                    "resumes from the checkpoint", job_id())
        return True
    log.warning("preempted, but `scontrol requeue %s` failed: %s", job_id(), done.stderr.strip())
    return False


def hand_back(code: int) -> None:
    """A job stopped by a signal has written its checkpoint: now let the scheduler bring it
    back. USR2 (submitit's warning before the time limit): submitit's own handler requeues it
    (and exits). SIGTERM while SLURM still says RUNNING (a preemption's grace time): requeue."""
    import signal

    if code == 128 + signal.SIGUSR2 and callable(handler := signal.getsignal(signal.SIGUSR2)):
        handler(signal.SIGUSR2, None)
    elif code == 128 + signal.SIGTERM:
        requeue_if_preempted()
