"""Each likelihood's log p(x|z) against torch.distributions and the closed forms, in nats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, ContinuousBernoulli, Laplace, Normal, kl_divergence

from vaerun.likelihoods import GaussianLearned, Likelihood
from vaerun.model import MLP, VAE
from vaerun.objective import Meter, elbo_terms

D = 784
torch.manual_seed(0)
OUT = torch.randn(16, D) * 2  # decoder outputs (logits)
GREY = torch.rand(16, D)
BINARY = torch.bernoulli(GREY)


def make(name: str, **kw):
    cls = Likelihood.lookup(name)
    return cls(cls.Config(**kw), D)


def test_bernoulli_is_minus_bce():
    lik = make("bernoulli")
    got = lik(OUT, BINARY).log_prob(BINARY)
    want = Bernoulli(logits=OUT).log_prob(BINARY).sum(-1)
    bce = F.binary_cross_entropy_with_logits(OUT, BINARY, reduction="none").sum(-1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, -bce)


@pytest.mark.parametrize("sigma", [0.05, 0.1, 1.0, 3.0])
def test_gaussian_closed_form_and_identity(sigma):
    lik = make("gaussian", sigma=sigma)
    mu = torch.sigmoid(OUT)
    got = lik(OUT, GREY).log_prob(GREY)
    sse = (GREY - mu).square().sum(-1)
    closed = -sse / (2 * sigma**2) - D / 2 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(got, Normal(mu, sigma).log_prob(GREY).sum(-1))
    torch.testing.assert_close(got, closed, rtol=1e-5, atol=1e-2)
    t = lik.terms(OUT, GREY)
    torch.testing.assert_close(t["sse_term"] + t["log_norm_term"], got, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(t["sigma"], torch.full((16,), sigma))


def test_mean_reduction_is_mse_plus_kl_and_a_gaussian_with_variance_d_over_2():
    lik = make("gaussian", reduction="mean")
    mu = torch.sigmoid(OUT)
    log_px_z = lik(OUT, GREY).log_prob(GREY)
    # what it reports: the Gaussian with sigma^2 = D/2
    torch.testing.assert_close(log_px_z, Normal(mu, math.sqrt(D / 2)).log_prob(GREY).sum(-1))
    # what it optimises: exactly F.mse_loss(x_hat, x), per image, as common code writes it
    mse = F.mse_loss(mu, GREY, reduction="none").mean(-1)
    torch.testing.assert_close(lik.reconstruction_loss(OUT, GREY, log_px_z), mse)
    # and the two differ only by the constant (D/2) log(2 pi D/2)
    const = D / 2 * math.log(2 * math.pi * D / 2)
    torch.testing.assert_close(-log_px_z - const, mse, rtol=0, atol=1e-3)


def test_mean_reduced_loss_equals_mse_plus_kl_through_the_model():
    torch.manual_seed(1)
    lik = make("gaussian", reduction="mean")
    vae = VAE(MLP.Config(hidden=32, latent_dim=4), lik, (1, 28, 28))
    torch.manual_seed(2)
    terms = elbo_terms(vae, GREY, beta=1.0)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["kl"])


def test_continuous_bernoulli_is_bernoulli_plus_log_normaliser():
    lik = make("continuous_bernoulli")
    got = lik(OUT, GREY).log_prob(GREY)
    torch.testing.assert_close(got, ContinuousBernoulli(logits=OUT).log_prob(GREY).sum(-1))
    log_norm = lik.terms(OUT, GREY)["log_norm_term"]
    bern = Bernoulli(logits=OUT, validate_args=False).log_prob(GREY).sum(-1)
    torch.testing.assert_close(got, bern + log_norm)
    # log C(lambda) >= log 2 > 0 per pixel: BCE leaves out a positive number of nats
    assert (log_norm > D * math.log(2) - 1e-3).all()
    # and its mean is the continuous Bernoulli's mean, not sigmoid(logits)
    torch.testing.assert_close(lik.mean(OUT), ContinuousBernoulli(logits=OUT).mean)


def test_laplace_is_l1():
    b = 0.2
    lik = make("laplace", scale=b)
    mu = torch.sigmoid(OUT)
    got = lik(OUT, GREY).log_prob(GREY)
    closed = -(GREY - mu).abs().sum(-1) / b - D * math.log(2 * b)
    torch.testing.assert_close(got, Laplace(mu, b).log_prob(GREY).sum(-1))
    torch.testing.assert_close(got, closed, rtol=1e-5, atol=1e-2)


def test_learned_shared_sigma_is_a_parameter_with_its_own_lr():
    lik = make("gaussian_learned", variance="shared", init_sigma=0.5, sigma_lr=0.02)
    assert lik.terms(OUT, GREY)["sigma"][0].item() == pytest.approx(0.5)
    (group,) = lik.param_groups()
    assert group["lr"] == 0.02 and group["params"][0] is lik.shared_log_sigma


def test_learned_optimal_sigma_is_the_batch_rmse_and_maximises_the_likelihood():
    lik = make("gaussian_learned", variance="optimal")
    mu = torch.sigmoid(OUT)
    mse = F.mse_loss(mu, GREY)
    t = lik.terms(OUT, GREY)
    assert t["sigma"][0].item() == pytest.approx(mse.sqrt().item(), rel=1e-5)
    best = lik(OUT, GREY).log_prob(GREY).sum()
    for s in (0.9, 1.1):  # any other sigma gives a lower likelihood
        other = Normal(mu, s * mse.sqrt()).log_prob(GREY).sum()
        assert other < best
    # in eval mode it uses the training average, not the batch in hand
    lik(OUT, GREY)
    lik.eval()
    assert lik.log_sigma(OUT, GREY * 0).exp().item() == pytest.approx(mse.sqrt().item(), rel=1e-5)


def test_kl_matches_closed_form():
    torch.manual_seed(3)
    lik = make("bernoulli")
    vae = VAE(MLP.Config(hidden=32, latent_dim=5), lik, (1, 28, 28))
    q = vae.posterior(GREY)
    mu, std = q.base_dist.loc, q.base_dist.scale
    closed = 0.5 * (mu.square() + std.square() - 1 - 2 * std.log()).sum(-1)
    torch.testing.assert_close(kl_divergence(q, vae.prior()), closed, rtol=1e-5, atol=1e-5)


def test_elbo_terms_add_up_and_meter_averages():
    torch.manual_seed(4)
    vae = VAE(MLP.Config(hidden=32, latent_dim=4), make("gaussian", sigma=0.3), (1, 28, 28))
    t = elbo_terms(vae, GREY, beta=2.0)
    torch.testing.assert_close(t["elbo"], t["log_px_z"] - t["kl"])
    torch.testing.assert_close(t["loss"], -t["log_px_z"] + 2.0 * t["kl"])
    meter = Meter()
    meter.add(t)
    meter.add(t)
    m = meter.means()
    assert m["kl"] == pytest.approx(t["kl"].mean().item(), rel=1e-5)
    assert m["sigma_optimal"] == pytest.approx(math.sqrt(m["mse"]))


def test_registry_lists_every_likelihood():
    assert {"bernoulli", "gaussian", "gaussian_learned", "continuous_bernoulli",
            "laplace"} <= set(Likelihood.registry)
    assert issubclass(Likelihood.lookup("gaussian_learned"), GaussianLearned)


@pytest.mark.parametrize("variance", ["per_pixel", "decoder"])
def test_per_pixel_sigmas_against_torch_distributions(variance):
    lik = make("gaussian_learned", variance=variance, min_log_sigma=-6.0)
    out = torch.randn(16, lik.params_per_pixel * D)
    if variance == "per_pixel":
        with torch.no_grad():
            lik.pixel_log_sigma.copy_(torch.randn(D))
        raw = lik.pixel_log_sigma
    else:
        assert lik.params_per_pixel == 2
        raw = out[:, D:]
    log_sigma = -6.0 + F.softplus(raw + 6.0)
    want = Normal(torch.sigmoid(out[:, :D]), log_sigma.exp()).log_prob(GREY).sum(-1)
    got = lik(out, GREY).log_prob(GREY)
    torch.testing.assert_close(got, want)
    t = lik.terms(out, GREY)
    torch.testing.assert_close(t["sse_term"] + t["log_norm_term"], got, rtol=1e-5, atol=1e-2)


def test_soft_lower_bound_holds_on_an_all_zero_image():
    zero = torch.zeros(4, D)
    out = torch.full((4, D), -30.0)  # decoder mean sigmoid(-30) ~ 1e-13: a perfect fit of 0s
    bounded = make("gaussian_learned", variance="per_pixel", min_log_sigma=-6.0)
    free = make("gaussian_learned", variance="per_pixel", min_log_sigma=None)
    for lik in (bounded, free):
        with torch.no_grad():
            lik.pixel_log_sigma.fill_(-25.0)  # where gradient descent drives it on 0 pixels
    assert bounded.log_sigma(out, zero).min().item() >= -6.0
    # log p <= D (6 - ½ log 2π): finite, and the loss cannot run to −∞
    cap = D * (6.0 - 0.5 * math.log(2 * math.pi))
    assert bounded(out, zero).log_prob(zero).max().item() <= cap + 1e-3
    assert free(out, zero).log_prob(zero).min().item() > 3 * cap  # unbounded: it grows on
