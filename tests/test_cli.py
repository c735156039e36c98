"""`vaerun train` end to end on a small real-MNIST subset: run directories, TensorBoard events
read back, metrics.json, sweeps, and one-line errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
from conftest import SMALL, run_process, scalars

COMMON = ["loss", "elbo", "log_px_z", "kl", "mse", "bce"]
GAUSSIAN = ["sigma", "sse_term", "log_norm_term", "sigma_optimal"]

CASES = {
    "bernoulli-binary": (["dataset=mnist_binary", "likelihood=bernoulli"], []),
    "bernoulli-grey": (["likelihood=bernoulli"], []),
    "gaussian": (["likelihood=gaussian", "likelihood.sigma=0.1"], GAUSSIAN),
    "gaussian-binary": (["dataset=mnist_binary", "likelihood=gaussian"], GAUSSIAN),
    "gaussian-mean": (["likelihood=gaussian", "loss.recon=sse", "loss.recon_over_pixels=mean"],
                      GAUSSIAN),
    "learned-shared": (["likelihood=gaussian_learned", "likelihood.variance=shared"], GAUSSIAN),
    "learned-optimal": (["likelihood=gaussian_learned", "likelihood.variance=optimal"], GAUSSIAN),
    "continuous-bernoulli": (["likelihood=continuous_bernoulli"], ["log_norm_term"]),
    "laplace": (["likelihood=laplace"], []),
    "conv": (["model=conv", "likelihood=gaussian"], GAUSSIAN),
    "discretized-logistic": (["likelihood=discretized_logistic"], []),
    "discretized-gaussian": (["likelihood=discretized_gaussian"], []),
    "logistic": (["likelihood=logistic", "dataset.dequantize=true"], []),
    "linear": (["model=linear", "likelihood=gaussian"], GAUSSIAN),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_writes_every_term(vaerun, tmp_path, case):
    overrides, extra = CASES[case]
    run = tmp_path / "run"
    assert vaerun("train", *overrides, *SMALL, f"hydra.run.dir={run}") == 0
    events = scalars(run)
    for split in ("train", "test"):
        for term in COMMON + extra:
            if split == "train" and term == "bce":
                term = "bce_last_batch"  # measured on the logging step's batch only
            assert f"{split}/{term}" in events, f"{split}/{term} missing"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epoch"] == 2
    assert metrics["step"] == 2 * 8  # 512 images / 64 per batch, 2 epochs
    test_steps = [s for s, _ in events["test/loss"]]
    assert test_steps == [8, 16]  # after every epoch, at the global step
    for tag, points in events.items():  # metrics.json = the last test event of every tag
        if tag.startswith("test/") and tag != "test/nll_iwae":
            assert metrics[tag] == pytest.approx(points[-1][1], rel=1e-6), tag
        assert all(math.isfinite(v) for _, v in points), tag
    assert (run / "checkpoints" / "last.pt").exists() and (run / "train.log").exists()
    assert (run / ".hydra" / "config.yaml").exists()


def test_gaussian_identity_on_every_test_step(vaerun, tmp_path):
    sigma = 0.3
    run = tmp_path / "run"
    assert vaerun("train", "likelihood=gaussian", f"likelihood.sigma={sigma}", *SMALL,
                  f"hydra.run.dir={run}") == 0
    ev = scalars(run)
    for i, (step, log_px_z) in enumerate(ev["test/log_px_z"]):
        sse, norm, mse = (ev[f"test/{k}"][i][1] for k in ("sse_term", "log_norm_term", "mse"))
        assert ev["test/mse"][i][0] == step
        assert sse + norm == pytest.approx(log_px_z, rel=1e-4)
        closed = -784 * mse / (2 * sigma**2) - 392 * math.log(2 * math.pi * sigma**2)
        assert closed == pytest.approx(log_px_z, rel=1e-4)
        assert ev["test/sigma_optimal"][i][1] == pytest.approx(math.sqrt(mse), rel=1e-5)


def test_bernoulli_on_grey_warns_once(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", "likelihood=bernoulli", *SMALL, f"hydra.run.dir={run}") == 0
    text = (run / "train.log").read_text()
    assert text.count("-BCE is not a normalised density") == 1
    assert "continuous_bernoulli" in text


def test_multirun_makes_one_named_directory_per_value(vaerun, tmp_path):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1", *SMALL,
                  f"hydra.sweep.dir={sweep}") == 0
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0_likelihood.sigma=0.1", "1_likelihood.sigma=1"]  # named by what varies
    for name in runs:
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["status"] == "finished"
        assert "test/kl" in scalars(sweep / name)


def test_default_run_directory_is_unique(vaerun, tmp_path):
    assert vaerun("train", *SMALL, "trainer.epochs=0") == 0
    assert vaerun("train", *SMALL, "trainer.epochs=0") == 0
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2


def test_help_lists_commands_and_groups(vaerun, capsys):
    assert vaerun("--help") == 0
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        vaerun("train", "--help")
    out = capsys.readouterr().out
    for group in ("dataset:", "likelihood:", "model:", "optimizer:", "trainer:"):
        assert group in out
    assert "gaussian_learned" in out and "mnist_binary" in out
    assert out.startswith("vaerun train: train one VAE")  # vaerun's words, not "train is
    assert "vaerun train --cfg job" in out and "powered by Hydra" not in out  # powered by Hydra"


BAD = {
    "likelihood=gaussian likelihood.sigma=0": "likelihood.sigma",
    "likelihood=gaussian likelihood.sigma=-1": "likelihood.sigma",
    "likelihood=gaussian likelihood.sigma=abc": "likelihood.sigma",
    "likelihood=laplace likelihood.scale=0": "likelihood.scale",
    "optimizer.lr=0": "optimizer.lr",
    "trainer.batch_size=0": "trainer.batch_size",
    "trainer.epochs=-1": "trainer.epochs",
    "model.latent_dim=0": "model.latent_dim",
    "model.hidden=0": "model.hidden",
    "dataset.n_train=0": "dataset.n_train",
    "dataset.n_test=10001": "dataset.n_test",
    "trainer.device=tpu": "trainer.device",
    "trainer.device=cuda": "trainer.device",
    "likelihood=nope": "likelihood=nope",
    "hydra.searchpath=[file://nothere]": "nothere is not a folder: give the folder of your configs",
    "+recipe=antixk": "the config has recipe already (+ adds what it lacks); choose the option "
                      "without +: recipe=antixk",  # was Hydra's hint for a yaml's defaults list
    "likelihood.sigmaa=1": "likelihood.sigmaa",
    "likelihood=gaussian_learned likelihood.variance=wide": "likelihood.variance",
    "-m likelihood=gaussian likelihood.sigma=0.1,0": "likelihood.sigma",
    "hydra.run.dir=runs/a=b,c=d": "hydra.run.dir=runs/a=b,c=d: mismatched input",
    "-m likelihood.sigma=0.1,0.3 hydra.sweep.dir=runs/σ=1": "hydra.sweep.dir=runs/σ=1: ",
    "trainer.resume=true": "continues the run in the folder you give (hydra.run.dir=RUN)",
    "-m likelihood=glob(gauss*)": "list the options to sweep",  # was a traceback
    # Hydra's order differed from the gate's: jobs ran in folders the gate had not checked
    "-m likelihood=gaussian likelihood.sigma=shuffle(0.1,1)": "shuffle runs a sweep's jobs in",
    "-m trainer.seed=1,2 trainer.resume=true": "continues the sweep in the folder you give "
                                               "(hydra.sweep.dir=outputs/multirun/NAME)",
}


@pytest.mark.parametrize("args", list(BAD))
def test_bad_input_is_one_error_line(tmp_path, args):
    proc = run_process(["train", *args.split()], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert BAD[args] in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_a_folder_given_bare_to_eval_or_report_is_shown_as_the_key_it_needs(vaerun, tmp_path,
                                                                            capsys):
    (tmp_path / "runs" / "my run").mkdir(parents=True)
    for command, key in (("eval", "run_dir"), ("report", "sweep_dir")):
        assert vaerun(command, "runs/my run") == 2
        assert f"(a folder: {key}='runs/my run')" in capsys.readouterr().err
    assert vaerun("eval", "nofolder") == 2
    assert "(a folder" not in capsys.readouterr().err


def test_python_dash_m_is_the_same_cli(tmp_path):
    proc = run_process(["--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "vaerun train" in proc.stdout
    proc = run_process(["frobnicate"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown command")


def test_existing_run_directory_is_not_overwritten(vaerun, tmp_path, capsys):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 0
    before = (run / "metrics.json").read_text()
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 2
    assert "trainer.resume=true" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == before




def test_short_runs_have_training_curves_and_every_step_is_counted(vaerun, tmp_path):
    """40 steps an epoch with log_every=50: a point at each epoch's end too, one meter across
    epochs, so the window 41-50 spans the epochs and no step is left out."""
    run = tmp_path / "run"
    assert vaerun("train", "dataset.n_train=5000", "dataset.n_test=256", "trainer.epochs=2",
                  "trainer.batch_size=128", "eval.iwae_k=2", f"hydra.run.dir={run}") == 0
    events = scalars(run)
    assert [s for s, _ in events["train/loss"]] == [40, 50, 80]
    assert [s for s, _ in events["train/bce_last_batch"]] == [50]  # its window's last batch
