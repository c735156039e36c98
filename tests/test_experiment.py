"""The pieces of a published setup, as features every run has: layer widths and activation,
Glorot initialisation, the decoder bias from the data, learning-rate schedules resumed exactly,
and `experiment=iwae_table1` (Burda et al. 2016, Table 1) composed as its protocol says."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL, run_process, scalars
from torch import nn

from vaerun.likelihoods import Likelihood
from vaerun.model import MLP, VAE
from vaerun.optim import IWAEStages, stage_of


def test_the_experiment_composes_to_the_papers_protocol(tmp_path):
    import yaml

    proc = run_process(["train", "experiment=iwae_table1", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["dataset"]["name"] == "mnist_binary" and cfg["dataset"]["binarize"] == "dynamic"
    assert cfg["likelihood"]["name"] == "bernoulli"
    m = cfg["model"]
    assert (m["hidden"], m["latent_dim"], m["activation"], m["init"], m["bias_from_data"]) == (
        [200, 200], 50, "tanh", "glorot", True)
    o = cfg["optimizer"]
    assert o["_target_"] == "torch.optim.Adam" and o["lr"] == 1e-3
    assert o["betas"] == [0.99, 0.999] and o["eps"] == 1e-4
    assert cfg["scheduler"]["name"] == "iwae_stages" and cfg["trainer"]["batch_size"] == 20
    assert cfg["trainer"]["epochs"] == 3280 == IWAEStages.epochs(IWAEStages.Config())
    assert cfg["eval"]["iwae_k"] == 5000


def test_the_experiment_trains_a_few_steps(tmp_path):
    run = tmp_path / "run"
    proc = run_process(["train", "experiment=iwae_table1", "dataset.n_train=100",
                        "dataset.n_test=64", "trainer.epochs=2", "eval.iwae_k=3",
                        "eval.quality_images=0", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["step"] == 2 * 5  # 100 images / 20 a batch
    lrs = [v for _, v in scalars(run)["train/lr"]]
    assert lrs == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])  # stage 0 (1 epoch), stage 1


@pytest.mark.parametrize("epoch, stage", [(0, 0), (1, 1), (3, 1), (4, 2), (12, 2), (13, 3),
                                          (39, 3), (40, 4), (1092, 6), (1093, 7), (3279, 7),
                                          (5000, 8)])
def test_the_stages_last_three_to_the_i_epochs(epoch, stage):
    assert stage_of(epoch, 3) == stage


def test_the_iwae_schedules_learning_rates_at_the_stage_boundaries():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = IWAEStages.build(IWAEStages.Config(), opt, 3280)
    lrs = []
    for _ in range(3300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # sum of 3^j for j < i
    for i, start in enumerate(starts):
        assert lrs[start] == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
        if start:
            assert lrs[start - 1] == pytest.approx(1e-3 * 10 ** (-(i - 1) / 7), rel=1e-12)
    assert lrs[3279] == lrs[3299] == pytest.approx(1e-4)  # the last stage's, past the end


def test_a_resume_at_a_stage_boundary_continues_the_schedule_exactly(vaerun, tmp_path):
    """Stages of 1 epoch each (growth 1): stopped after epoch 1 and resumed to 3, as one run."""
    args = [*SMALL, "scheduler=iwae_stages", "scheduler.growth=1", "scheduler.decay=0.5",
            "optimizer.lr=0.01"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert vaerun("train", *args, "trainer.epochs=3", f"hydra.run.dir={whole}") == 0
    assert vaerun("train", *args, "trainer.epochs=1", f"hydra.run.dir={parts}") == 0
    assert vaerun("train", *args, "trainer.epochs=3", f"hydra.run.dir={parts}",
                  "trainer.resume=true") == 0
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (whole, parts))
    for k in ("test/elbo", "test/kl", "test/nll_iwae"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k
    assert [v for _, v in scalars(parts)["train/lr"]] == pytest.approx([0.01, 0.005, 0.0025])



def test_a_cosine_run_refuses_more_epochs_on_resume_and_a_step_run_takes_them(vaerun, tmp_path,
                                                                             capsys):
    """A cosine schedule anneals over trainer.epochs, which its checkpoint holds: a finished
    run resumed with more epochs trained the next epoch at lr = min_lr (0: test/elbo did not
    move), then at a rising lr, neither schedule. It is refused, and nothing is changed; a step
    schedule, which depends on the epoch alone, still takes more epochs."""
    cosine, step = tmp_path / "cosine", tmp_path / "step"
    assert vaerun("train", *SMALL, "scheduler=cosine", f"hydra.run.dir={cosine}") == 0
    ckpt = cosine / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert vaerun("train", *SMALL, "scheduler=cosine", "trainer.epochs=4", "trainer.resume=true",
                  f"hydra.run.dir={cosine}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "over trainer.epochs=2 (scheduler=cosine)" in err and "trainer.epochs=2, or" in err
    assert ckpt.read_bytes() == before
    assert vaerun("train", *SMALL, "scheduler=step", "scheduler.step_size=1",
                  f"hydra.run.dir={step}") == 0
    assert vaerun("train", *SMALL, "scheduler=step", "scheduler.step_size=1", "trainer.epochs=3",
                  "trainer.resume=true", f"hydra.run.dir={step}") == 0
    assert json.loads((step / "metrics.json").read_text())["epoch"] == 3

def bernoulli_vae(**cfg) -> VAE:
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    return VAE(MLP.Config(**cfg), lik, (1, 28, 28))


def test_hidden_widths_and_the_activation_build_the_layers_asked_for():
    vae = bernoulli_vae(hidden=[32, 16], latent_dim=4, activation="tanh")
    shapes = [tuple(m.weight.shape) for m in vae.encoder if isinstance(m, nn.Linear)]
    assert shapes == [(32, 784), (16, 32), (8, 16)]
    shapes = [tuple(m.weight.shape) for m in vae.decoder if isinstance(m, nn.Linear)]
    assert shapes == [(16, 4), (32, 16), (784, 32)]
    assert sum(isinstance(m, nn.Tanh) for m in vae.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in vae.modules())
    one = bernoulli_vae(hidden=400)  # one width is one layer, as before
    assert [tuple(m.weight.shape) for m in one.encoder if isinstance(m, nn.Linear)] == [
        (400, 784), (40, 400)]


def test_glorot_initialisation_and_the_output_bias_from_the_data():
    torch.manual_seed(0)
    vae = bernoulli_vae(hidden=[200, 200], latent_dim=50, init="glorot")
    for m in vae.modules():
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6 / sum(m.weight.shape))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
            assert not m.bias.any()
    mean = torch.rand(784)
    mean[:3] = torch.tensor([0.0, 1.0, 0.5])
    vae.bias_from_data(mean, vae_link := MLP.Config().link)  # noqa: F841
    out = vae.decoder[-1].bias
    torch.testing.assert_close(torch.sigmoid(out), mean.clamp(0.001, 0.999))


@pytest.mark.parametrize("args, key", [(["model.hidden=[0]"], "model.hidden"),
                                       (["model.hidden=[]"], "model.hidden"),
                                       (["model.activation=swish"], "model.activation"),
                                       (["model=conv", "model.bias_from_data=true"],
                                        "model.bias_from_data"),
                                       (["scheduler=step", "scheduler.step_size=0"],
                                        "scheduler.step_size")])
def test_bad_widths_activations_and_schedules_are_one_line(tmp_path, args, key):
    proc = run_process(["train", *SMALL, *args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
