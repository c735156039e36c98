"""A run you can trust: NaN guard, SIGTERM then exact resume, refusals, determinism, bad data.
Behaviour about processes is tested with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL, Lines, run_process, scalars

# Long enough epochs (313 steps) that a SIGTERM lands mid-epoch; small test set and k.
KILL = ["dataset.n_train=20000", "dataset.n_test=500", "trainer.batch_size=64",
        "trainer.epochs=2", "eval.iwae_k=2", "trainer.log_every=25"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def without_time(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.endswith("_seconds")}  # timings differ


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    run, full = tmp_path / "killed", tmp_path / "full"
    cmd = [sys.executable, "-m", "vaerun", "train", *KILL, "trainer.progress_seconds=0",
           f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ,
                                                                  "PYTHONUNBUFFERED": "1"})
    out = Lines(proc.stdout)
    out.wait(r"epoch 2/2: 10/313 steps")  # into epoch 2, by its own progress line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    out.rest()
    assert proc.returncode == 128 + signal.SIGTERM, err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["status"] == "interrupted" and state["epoch"] == 1 and state["batch"] > 0
    assert metrics(run)["status"] == "interrupted"

    resumed = run_process(["train", *KILL, f"hydra.run.dir={run}", "trainer.resume=true"],
                          cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert run_process(["train", *KILL, f"hydra.run.dir={full}"], cwd=tmp_path).returncode == 0
    a, b = without_time(metrics(run)), without_time(metrics(full))
    assert a.keys() == b.keys() and a["status"] == "finished"
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-6), k
        else:
            assert a[k] == b[k], k
    # the curves continue without duplicate points, and the train/* points are the same as an
    # uninterrupted run's (the meter of the open window is in the checkpoint)
    events = scalars(run)
    assert [s for s, _ in events["test/loss"]] == [313, 626]
    full_train = scalars(full)["train/loss"]
    assert [s for s, _ in events["train/loss"]] == [s for s, _ in full_train]
    for (_, a_), (_, b_) in zip(events["train/loss"], full_train, strict=True):
        assert a_ == pytest.approx(b_, rel=1e-5)
    for tag, points in events.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), tag


def test_diverging_lr_stops_with_nan_message_and_keeps_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = run_process(["train", "optimizer.lr=1e4", *SMALL, f"hydra.run.dir={run}"],
                       cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite")
    assert "at epoch 1, step" in lines[0] and "optimizer.lr" in lines[0]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # loadable
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    m = metrics(run)
    assert m["status"] == "failed" and "non-finite" in m["error"]


def test_sweep_goes_on_after_a_failed_run(vaerun, tmp_path):
    sweep = tmp_path / "sweep"
    code = vaerun("train", "-m", "optimizer.lr=1e4,1e-3", *SMALL, f"hydra.sweep.dir={sweep}")
    assert code == 3
    assert metrics(sweep / "0_optimizer.lr=10000.0")["status"] == "failed"
    assert metrics(sweep / "1_optimizer.lr=0.001")["status"] == "finished"


def test_finished_run_is_not_retrained(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}") == 0
    before = (run / "metrics.json").read_text()
    files = sorted(p.name for p in run.iterdir())
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}", "trainer.resume=true") == 0
    assert (run / "metrics.json").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == files  # not even a new event file
    # asking for more epochs continues it
    assert vaerun("train", *SMALL[:2], "trainer.epochs=3", *SMALL[3:], f"hydra.run.dir={run}",
                  "trainer.resume=true") == 0
    assert metrics(run)["epoch"] == 3


def test_checkpoint_from_another_config_is_refused(vaerun, tmp_path, capsys):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 0
    code = vaerun("train", "likelihood=gaussian", *SMALL, f"hydra.run.dir={run}",
                  "trainer.resume=true")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "likelihood.name" in err[0] and "likelihood.sigma" in err[0]


def test_same_seed_same_metrics(vaerun, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        assert vaerun("train", "likelihood=gaussian_learned", *SMALL, "trainer.seed=3",
                      f"hydra.run.dir={run}") == 0
    assert without_time(metrics(a)) == without_time(metrics(b))
    c = tmp_path / "c"
    assert vaerun("train", "likelihood=gaussian_learned", *SMALL, "trainer.seed=4",
                  f"hydra.run.dir={c}") == 0
    assert metrics(c)["test/loss"] != metrics(a)["test/loss"]


def test_seed_zero_is_a_seed_and_null_is_random(vaerun, tmp_path):
    runs = [tmp_path / n for n in ("z1", "z2", "r")]
    seeds = ["trainer.seed=0", "trainer.seed=0", "trainer.seed=null"]
    for run, seed in zip(runs, seeds, strict=True):
        assert vaerun("train", *SMALL, "trainer.epochs=1", seed, f"hydra.run.dir={run}") == 0
    z1, z2, r = (metrics(p) for p in runs)
    assert z1["test/loss"] == z2["test/loss"] and z1["seed"] == 0
    assert r["seed"] != 0 and r["test/loss"] != z1["test/loss"]


def test_corrupt_data_file_from_the_cli(tmp_path):
    import gzip
    import shutil
    from importlib import resources

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    bundled = Path(str(resources.files("vaerun.bundled") / "mnist"))
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        with gzip.open(bundled / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    with open(raw / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(1_000_000)
    proc = run_process(["train", f"dataset.root={tmp_path / 'data'}", *SMALL,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data file ")
    assert "train-images-idx3-ubyte" in lines[0] and "Traceback" not in proc.stdout


def test_the_bce_of_a_model_gone_nan_is_a_nan_not_an_error():
    """Weights that turn NaN within a window reach the logging step's BCE first: it is a NaN
    there (torch's BCE would raise on it), which the loop's non-finite check then names."""
    from vaerun.config import LossConfig
    from vaerun.elbo import Objective, elbo_terms
    from vaerun.likelihoods import Likelihood
    from vaerun.model import MLP, VAE

    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    vae = VAE(MLP.Config(hidden=8, latent_dim=2), lik, (1, 28, 28))
    x = torch.rand(3, 784).round()
    objective = Objective(LossConfig(), 1.0, 784, 2)
    assert torch.isfinite(elbo_terms(vae, x, objective)["bce"]).all()
    with torch.no_grad():
        next(vae.parameters()).fill_(float("nan"))
    bce = elbo_terms(vae, x, objective)["bce"]
    assert bce.shape == (3,) and torch.isnan(bce).all()
