"""The linear VAE is probabilistic PCA: its exact log-likelihood, the pPCA optimum it reaches,
and the bounds that must sit above the truth, on Gaussian data with a known covariance."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import run_process
from omegaconf import OmegaConf
from torch.distributions import MultivariateNormal

from vaerun import ppca
from vaerun.assemble import build, checked, load_config, load_run
from vaerun.data import DataConfig, Dataset
from vaerun.evaluation import exact_metrics, iwae_nll
from vaerun.loop import train

D, LATENT = 10, 3
EIGEN = torch.tensor([6.0, 4.0, 2.5, 0.6, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2], dtype=torch.float64)


def covariance() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    return torch.randn(D, generator=g, dtype=torch.float64), q @ torch.diag(EIGEN) @ q.T


class SyntheticGaussian(Dataset):
    """x ~ N(m, C) with C's eigenvalues EIGEN: a data set whose pPCA optimum is known."""

    name = "test_gaussian"

    @dataclass
    class Config(DataConfig):
        name: str = "test_gaussian"
        n_train: int | None = 20000
        n_test: int | None = 2000

    def __init__(self, cfg, device="cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        mean, cov = covariance()
        g = torch.Generator().manual_seed(1)  # the same data in every process
        eps = torch.randn(cfg.n_train + cfg.n_test, D, generator=g, dtype=torch.float64)
        x = (mean + eps @ torch.linalg.cholesky(cov).T).float()
        self.train, self.test = x[: cfg.n_train].to(device), x[cfg.n_train:].to(device)
        self.dim, self.image_shape = D, (1, 1, D)

    @property
    def values(self) -> str:
        return "continuous"


def config(likelihood: dict, epochs: int = 40, model: str = "linear"):
    return checked(OmegaConf.create({
        "dataset": {"name": "test_gaussian"}, "likelihood": likelihood,
        "model": {"name": model, "latent_dim": LATENT},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 3e-3},
        "trainer": {"epochs": epochs, "batch_size": 128, "threads": 1},
        "eval": {"iwae_k": 1000, "batch_size": 500, "seed": 0}, "beta": 1.0}))


def test_marginal_nll_matches_multivariate_normal():
    g = torch.Generator().manual_seed(2)
    for d, latent, sigma in ((10, 3, 0.7), (50, 8, 0.05), (30, 30, 2.0)):
        w = torch.randn(d, latent, generator=g, dtype=torch.float64)
        b = torch.randn(d, generator=g, dtype=torch.float64)
        mvn = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d, dtype=torch.float64))
        x = mvn.sample((64,))
        torch.testing.assert_close(ppca.marginal_nll(x, w, b, sigma), -mvn.log_prob(x),
                                   rtol=1e-6, atol=0)


def test_the_pca_optimum_by_its_closed_form():
    mean, cov = covariance()
    x = MultivariateNormal(mean, cov).sample((50000,))
    spec = ppca.Spectrum.of(x)
    torch.testing.assert_close(spec.eigenvalues, EIGEN, rtol=0.03, atol=0.01)
    ref = spec.reference(x[:5000], 1.0, LATENT)
    lam = spec.eigenvalues[:LATENT]
    assert ref["ppca_active_units"] == 3
    assert ref["ppca_kl"] == pytest.approx(0.5 * torch.log(lam).sum().item())
    # the optimum's −log p(x): N(m, U(Λ − σ²)Uᵀ + σ²I), whose eigenvalues are λ_i or σ²
    c = spec.vectors @ torch.diag(torch.cat([lam, torch.ones(D - LATENT)])) @ spec.vectors.T
    want = -MultivariateNormal(spec.mean, c).log_prob(x[:5000]).mean().item()
    assert ref["ppca_nll"] == pytest.approx(want, rel=1e-9)
    assert spec.reference(x[:5000], 1.8, LATENT)["ppca_active_units"] == 2  # 6, 4 > 3.24 > 2.5
    assert spec.sigma_ml(LATENT) == pytest.approx(math.sqrt(EIGEN[3:].mean()), rel=0.05)


@pytest.mark.parametrize("likelihood", [
    {"name": "gaussian", "sigma": 1.0},
    {"name": "gaussian_learned", "variance": "shared"},
], ids=["fixed", "learned"])
def test_a_trained_linear_vae_reaches_the_ppca_optimum_and_bounds_hold(tmp_path, likelihood):
    cfg = config(likelihood)
    m = train(cfg, tmp_path / "run")
    assert m["status"] == "finished"
    elbo, iwae, exact = m["test/elbo"], m["test/nll_iwae"], m["test/nll_exact"]
    assert m["test/ppca_active_units"] == 3
    assert elbo == pytest.approx(-m["test/ppca_nll"], rel=0.01)  # the analytic optimum
    assert -elbo >= iwae - 0.05  # IWAE (k=1000) is a tighter bound ...
    assert iwae >= exact - 0.05  # ... and still above the truth
    assert exact == pytest.approx(m["test/ppca_nll"], abs=0.1)
    assert m["test/kl"] == pytest.approx(m["test/ppca_kl"], rel=0.05)
    # the exact value is the VAE's own marginal, recomputed here from its weights
    data, vae = load_run(tmp_path / "run", *load_config(tmp_path / "run"))
    w, b = vae.affine_mean()
    sigma = vae.likelihood.isotropic_sigma()[0]
    mvn = MultivariateNormal(b.double(), w.double() @ w.double().T
                             + sigma**2 * torch.eye(D, dtype=torch.float64))
    assert exact == pytest.approx(-mvn.log_prob(data.test.double()).mean().item(), rel=1e-6)


def test_exact_metrics_only_where_the_marginal_is_gaussian():
    for lik, model, has_exact, has_ref in (
            ({"name": "gaussian", "sigma": 1.0}, "linear", True, True),
            ({"name": "gaussian", "sigma": 1.0}, "mlp", False, True),
            ({"name": "gaussian_learned", "variance": "optimal"}, "linear", True, True),
            ({"name": "gaussian_learned", "variance": "per_pixel"}, "linear", False, False),
            ({"name": "bernoulli"}, "linear", False, False)):
        data, vae = build(config(lik, 1, model), torch.device("cpu"))  # in training mode, as
        m = exact_metrics(vae, data)  # at the end of training
        assert ("nll_exact" in m) == has_exact and ("ppca_nll" in m) == has_ref, (lik, model)


def test_iwae_of_an_untrained_linear_vae_closes_on_its_exact_likelihood():
    data, vae = build(config({"name": "gaussian", "sigma": 1.0}), torch.device("cpu"))
    vae.eval()  # untrained: the posterior is far off, so the bounds are loose and ordered
    x = data.test[:200]
    nll = [iwae_nll(vae, x, k, 200, seed=0, progress=False).mean().item()
           for k in (1, 100, 3000)]
    exact = ppca.marginal_nll(x, *vae.affine_mean(), 1.0).mean().item()
    assert nll[0] > nll[1] > nll[2] >= exact - 0.05


@pytest.mark.slow
def test_mnist_linear_vae_at_sigma_one_matches_ppca(tmp_path):
    """Issue #13's acceptance: 20 epochs of the linear VAE at σ = 1 on MNIST."""
    run = tmp_path / "run"
    proc = run_process(["train", "model=linear", "likelihood=gaussian", "likelihood.sigma=1",
                        "trainer.epochs=20", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["test/ppca_active_units"] == 12
    assert m["test/kl"] == pytest.approx(m["test/ppca_kl"], rel=0.05)
    assert m["test/nll_exact"] == pytest.approx(-m["test/elbo"], abs=0.5)
    assert m["test/nll_exact"] == pytest.approx(m["test/ppca_nll"], abs=0.5)
