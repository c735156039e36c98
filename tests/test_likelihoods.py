"""Each likelihood's log p(x|z) against torch.distributions and the closed forms, in nats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, ContinuousBernoulli, Laplace, Normal, kl_divergence

from vaerun.config import LossConfig
from vaerun.elbo import Meter, Objective, elbo_terms
from vaerun.likelihoods import GaussianLearned, Likelihood
from vaerun.model import MLP, VAE

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


EXTREME = torch.tensor([-1e4, -100.0, -30.0, -17.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 17.0, 30.0, 100.0,
                        1e4])


@pytest.mark.parametrize("data", ["binary", "grey"])
def test_the_bernoulli_likelihood_holds_at_extreme_logits(data):
    """log p(x|z) of likelihood=bernoulli in float32 against torch's Bernoulli in float64, at
    logits up to ±1e4 (where a clamp of probabilities would show), with its gradient."""
    logits = torch.cat([OUT[:2].flatten(), EXTREME]).repeat(3, 1)  # [3, N]
    x = torch.cat([(BINARY if data == "binary" else GREY)[:2].flatten(), torch.rand(len(EXTREME))])
    if data == "binary":
        x = x.round()
    exact = Bernoulli(logits=logits.double(), validate_args=False).log_prob(x.double()).sum(-1)
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), x.numel())
    leaf = logits.clone().requires_grad_()
    ours = lik(leaf, x).log_prob(x)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    assert ((ours.double() - exact).abs() <= 4e-7 * (1 + logits.double().abs()).sum(-1)).all()
    ours.sum().backward()
    torch.testing.assert_close(leaf.grad.double(), x.double() - torch.sigmoid(logits.double()))


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


def test_a_per_pixel_mean_squared_error_is_mse_plus_kl_and_a_gaussian_of_variance_d_over_2():
    """loss.recon=sse, mean over pixels (F.mse_loss(x_hat, x) per image) + KL: what is minimised
    is exactly that; the model it is, the Gaussian with σ² = D/2, is the one reported."""
    from vaerun.config import Over, Recon

    obj = Objective(LossConfig(recon=Recon.sse, recon_over_pixels=Over.mean), 1.0, D, 4)
    assert obj.implied(128) == {"implied_sigma": math.sqrt(D / 2)}
    lik = make("gaussian", sigma=obj.implied(128)["implied_sigma"])
    torch.manual_seed(1)
    vae = VAE(MLP.Config(hidden=32, latent_dim=4), lik, (1, 28, 28))
    torch.manual_seed(2)
    terms = elbo_terms(vae, GREY, obj)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["kl"])
    mu = torch.sigmoid(OUT)
    torch.testing.assert_close(lik(OUT, GREY).log_prob(GREY),
                               Normal(mu, math.sqrt(D / 2)).log_prob(GREY).sum(-1))


def test_continuous_bernoulli_is_bernoulli_plus_log_normaliser():
    lik = make("continuous_bernoulli")
    got = lik(OUT, GREY).log_prob(GREY)
    torch.testing.assert_close(got, ContinuousBernoulli(logits=OUT).log_prob(GREY).sum(-1))
    log_norm = lik.terms(OUT, GREY)["log_norm_term"]
    bern = Bernoulli(logits=OUT, validate_args=False).log_prob(GREY).sum(-1)
    torch.testing.assert_close(got, bern + log_norm)
    # log C(lambda) >= log 2 > 0 per pixel: BCE leaves out a positive number of nats
    assert (log_norm > D * math.log(2) - 1e-3).all()
    # and its mean is the continuous Bernoulli's mean, not sigmoid(logits) (torch's own, in
    # float64: in float32 torch is 0.25% off near logit 0, where its series switches on)
    torch.testing.assert_close(lik.mean(OUT), ContinuousBernoulli(logits=OUT.double()).mean.float())


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
    t = elbo_terms(vae, GREY, Objective(LossConfig(), 2.0, D, 4))
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


# -- likelihoods of the 8-bit grey levels themselves --------------------------------------------
LEVELS = torch.arange(256, dtype=torch.float32) / 255  # every value a pixel can take


def all_levels_log_probs(lik, out: torch.Tensor) -> torch.Tensor:
    """log P(x_i = k/255) for each k, for the [1, P·D] decoder output `out`: shape [256, D]."""
    d = lik.dim
    base = lik(out, torch.zeros(1, d)).base_dist  # per pixel, before summing over pixels
    return torch.stack([base.log_prob(torch.full((1, d), float(v)))[0] for v in LEVELS])


def extreme_outputs(lik, n: int = 3) -> torch.Tensor:
    """Random decoder outputs, from mild to extreme (|out| up to 60)."""
    g = torch.Generator().manual_seed(5)
    scales = [1.0, 10.0, 60.0]
    return torch.cat([torch.randn(1, lik.params_per_pixel * lik.dim, generator=g) * s
                      for s in scales[:n]])


@pytest.mark.parametrize("name, kw", [
    ("discretized_logistic", {"components": 5}),
    ("discretized_logistic", {"components": 1}),
    ("discretized_logistic", {"components": 3, "min_log_scale": None}),
    ("discretized_gaussian", {}),
    ("discretized_gaussian", {"min_log_sigma": None}),
])
@pytest.mark.parametrize("link", ["sigmoid", "identity"])
def test_each_pixels_256_probabilities_sum_to_one(name, kw, link):
    cls = Likelihood.lookup(name)
    lik = cls(cls.Config(**kw), 50, link)
    unbounded = None in kw.values()  # scales may then underflow to 0: keep |out| <= ~40
    for out in extreme_outputs(lik, 2 if unbounded else 3):
        lp = all_levels_log_probs(lik, out[None])
        assert torch.isfinite(lp).all() and (lp <= 1e-6).all()
        torch.testing.assert_close(lp.double().exp().sum(0), torch.ones(50, dtype=torch.float64),
                                   rtol=0, atol=1e-5)


def brute_force_mass(cdf, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """P(bin of x) = F(upper) − F(lower) in float64, edge bins to ±∞; above the mean as
    S(lower) − S(upper) with S(t) = F(2·loc − t) (symmetric F), so nothing cancels to 0."""
    k = torch.round(x * 255)
    lo = torch.where(k == 0, torch.tensor(-math.inf, dtype=torch.float64), (k - 0.5) / 255)
    hi = torch.where(k == 255, torch.tensor(math.inf, dtype=torch.float64), (k + 0.5) / 255)
    return torch.where(x < loc, cdf(hi) - cdf(lo), cdf(2 * loc - lo) - cdf(2 * loc - hi))


def test_discretized_logistic_against_torch_logistic_cdf():
    from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

    lik = make("discretized_logistic", components=3)
    g = torch.Generator().manual_seed(1)
    out = torch.randn(4, lik.params_per_pixel * D, generator=g) * 2
    x = torch.randint(0, 256, (4, D), generator=g) / 255
    parts = out.double().unflatten(-1, (3, 3, D)).movedim(-2, -1)  # [B, 3, D, K]
    log_pi = torch.log_softmax(parts[:, 0], -1)
    loc = parts[:, 1]  # unconstrained, as in PixelCNN++
    floor = -8.0
    scale = (floor + F.softplus(parts[:, 2] - floor)).exp()
    logistic = TransformedDistribution(Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                       [SigmoidTransform().inv, AffineTransform(loc, scale)])
    mass = brute_force_mass(logistic.cdf, x.double()[..., None].expand_as(loc), loc)
    want = torch.logsumexp(log_pi + mass.log(), -1).sum(-1)
    got = lik(out, x).log_prob(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_discretized_gaussian_against_normal_cdf():
    lik = make("discretized_gaussian")
    g = torch.Generator().manual_seed(2)
    out = torch.randn(4, 2 * D, generator=g) * 2
    out[:, D:].clamp_(min=-3.5)  # sigma >= 0.03: float64's Φ holds every bin's mass (|z| < 37)
    out[:, :D] = torch.rand(4, D, generator=g)  # locations in [0, 1], for the same reason
    x = torch.randint(0, 256, (4, D), generator=g) / 255
    loc = out[:, :D].double()
    floor = -8.0
    sigma = (floor + F.softplus(out[:, D:].double() - floor)).exp()
    # Φ(z) = erfc(−z/√2)/2: Normal.cdf and special.ndtr (1 + erf) are 0 below z ≈ −8.3 even in
    # float64, where this holds to 1e-300
    def cdf(t):
        return torch.special.erfc((loc - t) / (sigma * math.sqrt(2))) / 2

    mass = brute_force_mass(cdf, x.double(), loc)
    torch.testing.assert_close(lik(out, x).log_prob(x).double(), mass.log().sum(-1),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["discretized_logistic", "discretized_gaussian"])
def test_discretized_mean_is_the_mean_of_its_levels(name):
    lik = make(name, **({"components": 2} if name == "discretized_logistic" else {}))
    g = torch.Generator().manual_seed(3)
    out = torch.randn(1, lik.params_per_pixel * 40, generator=g)
    lik.dim = 40
    lp = all_levels_log_probs(lik, out)
    exact = (LEVELS[:, None] * lp.exp()).sum(0)
    assert (lik.mean(out)[0] - exact).abs().max() < 0.5 / 255  # within half a grey level


@pytest.mark.parametrize("name", ["discretized_logistic", "discretized_gaussian"])
@pytest.mark.parametrize("level, reach", [(0, 0.99), (255, 0.99), (128, 0.97), (3, 0.97)])
def test_a_discretized_pixel_can_take_almost_all_the_mass(name, level, reach):
    """What a likelihood can reach, not only that it sums to 1: one pixel's decoder outputs,
    optimised freely, give its grey level P >= 0.99 at the edges and >= 0.97 inside (with the
    locations squashed into (0, 1) and the floor at -7 on [0, 1], the logistic stopped at
    0.8957 and 0.7914), for one logistic and for a mixture."""
    cls = Likelihood.lookup(name)
    lik = cls(cls.Config(**({"components": 3} if name == "discretized_logistic" else {})), 1,
              "sigmoid")
    x = torch.full((1, 1), level / 255)
    out = torch.zeros(1, lik.params_per_pixel, requires_grad=True)

    def loss():
        return -lik(out, x).log_prob(x).sum()

    adam = torch.optim.Adam([out], lr=0.05)
    for _ in range(1000):  # near the optimum, then to it (Adam's steps of ~lr jitter round it)
        adam.zero_grad()
        loss().backward()
        adam.step()
    lbfgs = torch.optim.LBFGS([out], max_iter=500, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        lbfgs.zero_grad()
        value = loss()
        value.backward()
        return value

    lbfgs.step(closure)
    p = (-loss()).exp().item()
    assert p >= reach, p
    lp = all_levels_log_probs(lik, out.detach())  # and the levels still sum to 1
    assert lp.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_bits_per_dim_on_grey_only():
    lik = make("discretized_logistic")
    assert lik.bits_per_dim(1000.0, "8bit")[0] == pytest.approx(1000 / (D * math.log(2)))
    for values in ("binary", "continuous"):
        value, why = lik.bits_per_dim(1000.0, values)
        assert value is None and why
    assert lik.explain("continuous") and lik.explain("8bit") is None


# -- the continuous Bernoulli, right at every logit -----------------------------------------
CB_LOGITS = [-40.0, -20.0, -5.0, 0.0, 5.0, 20.0, 40.0]


@pytest.mark.parametrize("logit", CB_LOGITS)
def test_continuous_bernoulli_integrates_to_one_and_its_mean(logit):
    lik = make("continuous_bernoulli")
    lik.dim = 1
    x = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    out = torch.full((1, 1), logit)
    log_p = torch.stack([lik(out, xi.view(1, 1).float()).log_prob(xi.view(1, 1).float())
                         for xi in x[::4000]])  # through the likelihood, in float32
    dist = lik.dist(torch.full((1,), logit, dtype=torch.float64))
    dens = dist.log_prob(x[:, None]).exp()[:, 0]
    torch.testing.assert_close(log_p.double().exp()[:, 0], dens[::4000], rtol=1e-4, atol=0)
    assert torch.trapezoid(dens, x).item() == pytest.approx(1, abs=1e-4)
    mean = torch.trapezoid(dens * x, x).item()
    assert lik.mean(out).item() == pytest.approx(mean, abs=1e-5)


def test_continuous_bernoulli_agrees_with_torch_where_torch_is_right():
    logits = torch.linspace(-10, 10, 201)
    ours = make("continuous_bernoulli").dist(logits)
    theirs = ContinuousBernoulli(logits=logits)
    torch.testing.assert_close(ours._cont_bern_log_norm(), theirs._cont_bern_log_norm(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.mean, theirs.mean, rtol=1e-4, atol=1e-5)
    # and past |logit| ≈ 16, where torch's normaliser is stuck, ours keeps growing as log|L|
    far = make("continuous_bernoulli").dist(torch.tensor([-30.0, -100.0]))
    torch.testing.assert_close(far._cont_bern_log_norm(), torch.tensor([30.0, 100.0]).log(),
                               rtol=1e-6, atol=1e-6)


def test_pixel_mixture_is_torchs_mixture_same_family():
    from torch.distributions import Categorical, MixtureSameFamily

    from vaerun.distributions import BinnedLogistic, PixelMixture

    g = torch.Generator().manual_seed(4)
    logits, loc, log_s = torch.randn(3, 2, 4, 30, generator=g)  # [B=2, K=4, D=30] each
    x = torch.randint(0, 256, (2, 30), generator=g) / 255
    ours = PixelMixture(logits, BinnedLogistic(torch.sigmoid(loc), log_s.exp()))
    theirs = MixtureSameFamily(Categorical(logits=logits.movedim(1, -1)), BinnedLogistic(
        torch.sigmoid(loc).movedim(1, -1), log_s.exp().movedim(1, -1)))
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    torch.testing.assert_close(ours.mean, theirs.mean)
    draws = ours.sample((500,))
    assert draws.shape == (500, 2, 30) and set((draws * 255).round().unique().tolist()) <= set(
        range(256))


def logistic_log_density(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log p(y) of the logistic, in float64: −t − log s − 2·log(1 + e^{−t})."""
    y, loc, scale = y.double(), loc.double(), scale.double()
    t = (y - loc) / scale
    return -t - scale.log() - 2 * F.softplus(-t)


def test_logistic_density_holds_at_extreme_parameters():
    from vaerun.distributions import Logistic

    loc = torch.tensor([0.0, 0.0, 5.0, -3.0, 0.5, 0.5])
    scale = torch.tensor([1.0, 1e-3, 1e-4, 2.0, math.exp(-8), math.exp(20)])
    y = torch.tensor([0.3, 0.9, -4.0, 100.0, 0.5, 1e-6])
    got = Logistic(loc, scale).log_prob(y).double()
    torch.testing.assert_close(got, logistic_log_density(y, loc, scale), rtol=1e-6, atol=1e-5)
    assert got[1] < -800 and got[2] < -8e4  # no clamp: ~900 and ~9e4 nats from the mode


@pytest.mark.parametrize("components", [1, 5])
def test_logistic_likelihood_is_the_mixture_of_logistic_densities(components):
    lik = make("logistic", components=components)
    k = components
    g = torch.Generator().manual_seed(5)
    out = torch.randn(4, lik.params_per_pixel * D, generator=g)
    parts = out.unflatten(-1, (-1, k, D))
    log_scale = soft_floor_ref(parts[:, -1], -8.0)
    per = logistic_log_density(GREY[:4].unsqueeze(1), parts[:, -2], log_scale.exp())
    if k > 1:
        per = per + torch.log_softmax(parts[:, 0].double(), 1)
    want = torch.logsumexp(per, 1).sum(-1)
    torch.testing.assert_close(lik(out, GREY[:4]).log_prob(GREY[:4]).double(), want,
                               rtol=1e-5, atol=1e-2)
    mean = lik.mean(out)
    pi = torch.softmax(parts[:, 0], 1) if k > 1 else torch.ones_like(parts[:, -2])
    torch.testing.assert_close(mean, (pi * parts[:, -2]).sum(1))


def soft_floor_ref(raw: torch.Tensor, m: float) -> torch.Tensor:
    return m + F.softplus(raw.double() - m)


def test_logistic_density_integrates_to_one_and_is_a_density_on_dequantised_pixels():
    d = 49  # pixels (each its own mixture: 49 test what 784 do, in a 16th of the time)
    lik = Likelihood.lookup("logistic")(Likelihood.lookup("logistic").Config(components=3), d)
    g = torch.Generator().manual_seed(6)
    out = torch.randn(1, lik.params_per_pixel * d, generator=g) * 0.5
    out.unflatten(-1, (3, 3, d))[0, 2] -= 2.5  # scales about e^-2.5: all mass well inside [-4, 5]
    grid = torch.linspace(-4, 5, 90001)
    dist = lik(out, GREY[:1, :d]).base_dist  # per pixel, [1, d]
    dens = dist.log_prob(grid[:, None, None].expand(-1, 1, d)).exp()
    mass = torch.trapezoid(dens.double(), grid.double(), dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=2e-4, rtol=0)
    assert lik.bits_per_dim(0.0, "continuous")[0] == pytest.approx(8.0)
    assert lik.bits_per_dim(0.0, "8bit")[0] is None


def test_a_sigma_past_float32_is_named_when_the_loss_goes_non_finite():
    """likelihood.sigma=1e-20 made the loss non-finite, and the line said "try a smaller
    optimizer.lr": a squared error of 1 on each of 784 pixels is then 3.9e42 nats."""
    from vaerun.likelihoods import Gaussian

    hint = Gaussian(Gaussian.Config(sigma=1e-20), 784).nonfinite_hint()
    assert hint == ("likelihood.sigma=1e-20 prices a squared error of 1 on each pixel at 3.9e+42 "
                    "nats (float32 ends at 3.4e38): give a larger likelihood.sigma")
    assert Gaussian(Gaussian.Config(sigma=1e-3), 784).nonfinite_hint() is None
