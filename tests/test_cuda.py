"""On a GPU (`pytest -m cuda`; skipped without one): an epoch trains on CUDA, resumes there from
a CPU checkpoint and is evaluated there, and CUDA's numbers agree with the CPU's."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL, run_process

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
    # trained on CUDA and on the CPU from the same seed: the same model to within what
    # different noise streams make of one epoch
    a, b = metrics(cuda), json.loads((cpu / "metrics.json").read_text())
    assert a["test/elbo"] == pytest.approx(b["test/elbo"], rel=0.1)
