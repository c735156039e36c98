"""On a GPU (`pytest -m cuda`; skipped without one): an epoch trains on CUDA, resumes there from
a CPU checkpoint and is evaluated there, and CUDA's numbers agree with the CPU's; training steps
never wait for the device (CUDA's own sync check, beside tests/test_gpu_ready.py's count on the
CPU); a deterministic run repeats itself bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL, run_process
from test_gpu_ready import STEPS, step_id, trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ARGS = [*SMALL, "dataset.n_train=4096", "dataset.n_test=1000", "eval.iwae_k=100"]


def metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_train_resume_and_evaluate_on_cuda_agree_with_the_cpu(tmp_path):
    cpu, cuda = tmp_path / "cpu", tmp_path / "cuda"
    for run, device in ((cpu, "cpu"), (cuda, "cuda")):
        done = run_process(["train", *ARGS, "trainer.epochs=1", f"trainer.device={device}",
                            f"hydra.run.dir={run}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    one_epoch = {"cpu": metrics(cpu), "cuda": metrics(cuda)}
    # the CPU run's checkpoint resumes on CUDA (its random streams are CPU ones)
    done = run_process(["train", *ARGS, "trainer.epochs=2", "trainer.device=cuda",
                        "trainer.resume=true", f"hydra.run.dir={cpu}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert metrics(cpu)["epoch"] == 2 and metrics(cpu)["status"] == "finished"
    # one trained model, evaluated on each device: the same estimates within Monte Carlo error
    # (different noise streams) and float rounding
    got = {}
    for device in ("cpu", "cuda"):
        done = run_process(["eval", f"run_dir={cuda}", "eval.iwae_k=100",
                            f"trainer.device={device}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        got[device] = metrics(cuda)
    for key, tol in (("test/nll_iwae", 0.01), ("test/kl_dim_max", 1e-4),
                     ("test/active_units", 0)):
        assert got["cuda"][key] == pytest.approx(got["cpu"][key], rel=tol, abs=tol), key
    # one epoch trained on CUDA and on the CPU from the same seed: the same model to within
    # what different noise streams and kernels make of one epoch
    assert one_epoch["cuda"]["test/elbo"] == pytest.approx(one_epoch["cpu"]["test/elbo"], rel=0.03)


@pytest.mark.parametrize("overrides", STEPS, ids=step_id)
def test_twenty_training_steps_on_cuda_never_wait_for_the_device(tmp_path, overrides):
    """torch.cuda's sync debug mode raises on any call that blocks the host on the device (an
    `.item()`, a `bool()` of a tensor, a copy from pageable host memory)."""
    t = trainer(tmp_path, *overrides, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in range(1, 21):
            t.step(b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        t.runlog.close()
    assert t.p.step == 21
    assert math.isfinite(t.s.meter.means()["loss"])  # read back once, after the steps


def test_a_deterministic_cuda_run_repeats_itself(tmp_path):
    got = []
    for name in ("one", "two"):
        run = tmp_path / name
        done = run_process(["train", *SMALL, "trainer.device=cuda", "trainer.deterministic=true",
                            "eval.quality_images=0", f"hydra.run.dir={run}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        got.append(metrics(run))
    for key in ("test/elbo", "test/nll_iwae", "test/kl"):
        assert got[0][key] == got[1][key], key


def test_a_cuda_device_this_machine_lacks_is_one_error(tmp_path):
    n = torch.cuda.device_count()
    proc = run_process(["train", *SMALL, f"trainer.device=cuda:{n}"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: trainer.device=")
    assert f"cuda:0 to cuda:{n - 1}" in proc.stderr and "Traceback" not in proc.stderr
