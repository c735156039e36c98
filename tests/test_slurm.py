"""Sweeps on a real SLURM cluster with no one watching: requeue, preemption with a grace time,
time limits and a failing job, each ending as an uninterrupted local run would (1e-6).

Slow, and only where a one-node cluster can be started: as root, with apt, from
`../shared/slurm/setup.sh` beside the project (or $VAERUN_SLURM_SETUP). It uses partitions
`debug` and `high` (a `high` job preempts `debug` jobs), with PREEMPT_GRACE=30.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_process

SETUP = Path(os.environ.get("VAERUN_SLURM_SETUP",
                            Path(__file__).resolve().parents[2] / "shared/slurm/setup.sh"))
pytestmark = pytest.mark.slow

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "trainer.device=cpu", "trainer.threads=1"]
RUN = ["likelihood=gaussian", "dataset.n_test=256", "eval.iwae_k=4", "trainer.batch_size=64"]
COMPARED = ("test/loss", "test/elbo", "test/kl", "test/mse", "test/nll_iwae")


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not shutil.which("apt-get") or not SETUP.exists():
        pytest.skip(f"needs root, apt and {SETUP} to start a local SLURM cluster")
    done = subprocess.run(["bash", str(SETUP)], env={**os.environ, "PREEMPT_GRACE": "30"},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start: {done.stdout[-300:]}")
    yield
    subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, timeout=300)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def reference(tmp_path: Path, overrides: list[str]) -> dict:
    """The same run, uninterrupted, on this machine without SLURM (one thread, as the jobs)."""
    run = tmp_path / "local" / "_".join(overrides).replace("/", "_").replace("=", "-")
    proc = run_process(["train", *RUN, *overrides, "trainer.device=cpu", "trainer.threads=1",
                        f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return metrics(run)


def same(a: dict, b: dict) -> None:
    for k in COMPARED:
        assert a[k] == pytest.approx(b[k], rel=1e-6), k


def sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vaerun", "train", "-m", *SLURM, *RUN, *args,
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slurm_jobs() -> dict[str, str]:
    """Running and pending jobs: SLURM id -> state."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_training(log: Path, pattern: str = "training ", timeout: float = 600) -> None:
    """Until the job's log has a line matching `pattern` (default: training has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{log} never had a line matching {pattern!r} within {timeout} s")


def job_dir(tmp_path: Path, num: int) -> Path:
    (found,) = (tmp_path / "sweep").glob(f"{num}_*")
    return found


def test_a_two_job_sweep_through_slurm_finishes_as_local_runs(cluster, tmp_path):
    proc = sweep(tmp_path, "likelihood.sigma=0.1,1", "dataset.n_train=5000", "trainer.epochs=1")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    for num, sigma in enumerate(("0.1", "1")):
        m = metrics(job_dir(tmp_path, num))
        assert m["status"] == "finished"
        same(m, reference(tmp_path, [f"likelihood.sigma={sigma}", "dataset.n_train=5000",
                                     "trainer.epochs=1"]))
    # resumed as the README says (submitit left its submission files as links in .submitit/)
    assert any(p.is_symlink() for p in (tmp_path / "sweep" / ".submitit").iterdir())
    proc = sweep(tmp_path, "likelihood.sigma=0.1,1", "dataset.n_train=5000", "trainer.epochs=1",
                 "trainer.resume=true")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert all("already finished" in (job_dir(tmp_path, n) / "train.log").read_text()
               for n in (0, 1))


def test_requeued_and_preempted_jobs_resume_to_the_same_metrics(cluster, tmp_path):
    """Job 0 is requeued mid-epoch with `scontrol requeue`; job 1 is preempted by a `high` job
    (grace 30 s). Each asks for both CPUs, so they run one at a time."""
    args = ["likelihood.sigma=0.1,0.3", "dataset.n_train=60000", "trainer.epochs=3",
            "hydra.launcher.cpus_per_task=2", "trainer.progress_seconds=0.2"]
    proc = sweep(tmp_path, *args)
    mid_epoch = r"epoch 1/3: \d\d+/938 steps"  # its own progress line (batch 64): mid-epoch
    wait_training(tmp_path / "sweep" / "0_likelihood.sigma=0.1" / "train.log", mid_epoch)
    (first,) = [j for j, s in slurm_jobs().items() if j.endswith("_0") and s == "RUNNING"]
    subprocess.run(["scontrol", "requeue", first], check=True)
    wait_training(tmp_path / "sweep" / "1_likelihood.sigma=0.3" / "train.log", mid_epoch)
    subprocess.run(["sbatch", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 5"],
                   check=True, capture_output=True, cwd=tmp_path)
    _, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err
    for num, sigma in enumerate(("0.1", "0.3")):
        run = job_dir(tmp_path, num)
        log = (run / "train.log").read_text()
        assert "SLURM restarted this job" in log and "resuming" in log, num
        same(metrics(run), reference(tmp_path, [f"likelihood.sigma={sigma}", *args[1:3]]))
    assert "preempted: the checkpoint is written" in (job_dir(tmp_path, 1) / "train.log"
                                                      ).read_text()


def test_a_job_past_its_time_limit_finishes_after_its_requeues(cluster, tmp_path):
    args = ["likelihood.sigma=0.1", "dataset.n_train=60000", "trainer.epochs=10"]
    proc = sweep(tmp_path, *args, "hydra.launcher.timeout_min=1",
                 "hydra.launcher.signal_delay_s=30")
    _, err = proc.communicate(timeout=3600)
    assert proc.returncode == 0, err
    run = job_dir(tmp_path, 0)
    log = (run / "train.log").read_text()
    assert log.count("SLURM restarted this job") >= 1 and "signal 12" in log
    m = metrics(run)
    assert m["status"] == "finished" and m["epoch"] == 10
    same(m, reference(tmp_path, args))  # exact resume: no finished step lost, none repeated


def test_a_failing_job_makes_the_sweep_fail_with_one_line_naming_it(cluster, tmp_path):
    proc = sweep(tmp_path, "optimizer.lr=1e4,1e-3", "dataset.n_train=2000", "trainer.epochs=1")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "job 0" in lines[0] and "non-finite" in lines[0], err
    assert "Traceback" not in err
    assert metrics(job_dir(tmp_path, 1))["status"] == "finished"
