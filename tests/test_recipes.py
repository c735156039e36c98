"""Recipes: the loss lines people copy, each minimised as its source writes it, and named as the
model it is (σ = sqrt(a_kl / (2 a_rec)) for a squared error, β = a_kl / a_rec for a -log p)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL, scalars

from vaerun import assemble
from vaerun.data import MNIST
from vaerun.elbo import elbo_terms

RECIPES = ["pytorch_examples", "keras", "antixk", "lightning_bolts", "pythae", "mse_sum",
           "sigma_vae"]
D = 784


def composed(*overrides: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("vaerun.conf", version_base="1.3"):
            return compose("train", ["dataset.n_train=1000", "dataset.n_test=2",
                                     "trainer.device=cpu", *overrides])
    finally:
        GlobalHydra.instance().clear()


def kld(mu, logvar):
    """The KL each source writes: -0.5 * sum(1 + logvar - mu^2 - exp(logvar)), per image."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def source_loss(name: str, x, mu, logvar, logits):
    """Each source's loss for the batch, written out here with plain torch ops."""
    x_hat = torch.sigmoid(logits[:, :D])
    if name == "pytorch_examples":
        return F.binary_cross_entropy(x_hat, x, reduction="sum") + kld(mu, logvar).sum()
    if name == "keras":
        bce = F.binary_cross_entropy(x_hat, x, reduction="none").sum(1)
        return bce.mean() + kld(mu, logvar).mean()
    if name == "antixk":
        return F.mse_loss(x_hat, x) + 0.00025 * kld(mu, logvar).mean()
    if name == "lightning_bolts":
        q = torch.distributions.Normal(mu, torch.exp(logvar / 2))
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        return F.mse_loss(x_hat, x, reduction="mean") + 0.1 * torch.distributions.kl_divergence(
            q, p).mean()
    if name == "pythae":
        rec = 0.5 * F.mse_loss(x_hat, x, reduction="none").sum(dim=-1)
        return (rec + kld(mu, logvar)).mean(dim=0)
    if name == "mse_sum":
        return F.mse_loss(x_hat, x, reduction="sum") + kld(mu, logvar).sum()
    if name == "sigma_vae":
        log_sigma = ((x - x_hat) ** 2).mean().sqrt().log()
        log_sigma = -6 + F.softplus(log_sigma + 6)
        nll = 0.5 * ((x - x_hat) / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
        return nll.sum() + kld(mu, logvar).sum()
    raise KeyError(name)


@pytest.fixture(scope="module")
def batch():
    return MNIST(MNIST.Config(n_train=1, n_test=64)).test.double()


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_minimises_its_sources_loss(name, batch):
    cfg = assemble.checked(composed(f"recipe={name}"), training=False)
    assert cfg.loss.name == name and cfg.loss.source
    torch.manual_seed(0)
    data, vae = assemble.build(cfg, torch.device("cpu"))
    vae.double().train()
    objective = assemble.objective(cfg, D)
    torch.manual_seed(1)
    ours = elbo_terms(vae, batch, objective)["loss"].mean()
    torch.manual_seed(1)  # the same z as elbo_terms draws
    q = vae.posterior(batch)
    z = q.rsample()
    mu, logvar = vae.encoder(batch).chunk(2, dim=-1)
    want = source_loss(name, batch, mu, logvar, vae.decode(z))
    assert ours.item() == pytest.approx(want.item(), rel=1e-6)


IMPLIED = {"pytorch_examples": ("implied_beta", 1.0), "keras": ("implied_beta", 1.0),
           "antixk": ("implied_sigma", math.sqrt(0.00025 * D / 2)),
           "lightning_bolts": ("implied_sigma", math.sqrt(0.1 * D / (2 * 256))),
           "pythae": ("implied_sigma", 1.0), "mse_sum": ("implied_sigma", math.sqrt(0.5)),
           "sigma_vae": ("implied_beta", 1.0)}
HAND = [  # a user's own lines, spelled out: (overrides, implied key, closed form)
    (["likelihood=gaussian", "loss.recon=sse", "loss.recon_over_pixels=mean"],
     "implied_sigma", math.sqrt(D / 2)),  # F.mse_loss(x_hat, x) per image + KL
    (["likelihood=gaussian", "loss.recon=sse", "loss.recon_over_pixels=mean",
      "loss.kl_over_batch=sum", "trainer.batch_size=100"],  # the examples VAE with MSE for BCE
     "implied_sigma", math.sqrt(100 * D / 2)),
    (["loss.recon_weight=2", "beta=0.5"], "implied_beta", 0.25),
    (["loss.kl_over_latents=mean", "model.latent_dim=10", "beta=3"], "implied_beta", 0.3),
]


@pytest.mark.parametrize("name", RECIPES)
def test_the_implied_model_of_each_recipe_is_the_closed_form(name):
    cfg = assemble.checked(composed(f"recipe={name}"), training=False)
    key, value = IMPLIED[name]
    got = assemble.objective(cfg, D).implied(cfg.trainer.batch_size)
    assert set(got) == {key} and got[key] == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("overrides, key, value", HAND)
def test_a_hand_spelled_loss_implies_its_closed_form(overrides, key, value):
    cfg = assemble.checked(composed(*overrides), training=False)
    assert assemble.objective(cfg, D).implied(cfg.trainer.batch_size)[key] == pytest.approx(
        value, rel=1e-12)


def test_the_squared_error_asks_for_a_gaussian(vaerun, capsys):
    assert vaerun("train", "loss.recon=sse", *SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: loss.recon=") and "likelihood=gaussian" in err[0]


def test_an_unknown_recipe_is_one_line_naming_the_choices(vaerun, capsys):
    assert vaerun("train", "recipe=antix", *SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: recipe=antix is not an option")
    assert all(r in err[0] for r in RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_vaerun_train_recipe_runs_and_records_its_implied_model(vaerun, tmp_path, name):
    run = tmp_path / "run"
    assert vaerun("train", f"recipe={name}", *SMALL, "trainer.epochs=1",
                  f"hydra.run.dir={run}") == 0
    line = next(ln for ln in (run / "train.log").read_text().splitlines() if "- loss (" in ln)
    model = "Gaussian VAE with sigma = " if IMPLIED[name][0] == "implied_sigma" else " VAE at beta = 1"
    assert f"loss ({name}): " in line and model in line, line
    m = json.loads((run / "metrics.json").read_text())
    key, value = IMPLIED[name]
    assert m[f"test/{key}"] == pytest.approx(value, rel=1e-9)
    assert scalars(run)[f"test/{key}"][-1][1] == pytest.approx(value, rel=1e-6)
    if key == "implied_sigma":  # the Gaussian's own sigma is the implied one
        assert m["test/sigma"] == pytest.approx(value, rel=1e-6)


def test_calibration_fixes_what_a_wrong_sigma_costs_after_training(vaerun, tmp_path):
    """σ = 1 is far from the decoder's RMSE (about 0.2 here): σ set to the training images'
    RMSE gives a higher test ELBO and fewer bits/dim, from the same encoder and decoder."""
    run = tmp_path / "run"
    assert vaerun("train", "likelihood=gaussian", "likelihood.sigma=1", "dataset.dequantize=true",
                  *SMALL, f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["test/elbo_calibrated"] > m["test/elbo"] + 100
    assert m["test/bits_per_dim_calibrated"] < m["test/bits_per_dim"]
    assert 0.05 < m["test/sigma_calibrated"] < 0.5
    # the closed form from the test MSE and KL
    s2, d = m["test/sigma_calibrated"] ** 2, D
    assert m["test/elbo_calibrated"] == pytest.approx(
        -d * m["test/mse"] / (2 * s2) - d / 2 * math.log(2 * math.pi * s2) - m["test/kl"])
