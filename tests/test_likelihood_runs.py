"""Issue acceptance: every likelihood trains from the CLI on grey MNIST with finite numbers, and
its logged test/log_px_z equals a direct torch.distributions computation on the same outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL
from omegaconf import OmegaConf
from torch.distributions import Bernoulli, ContinuousBernoulli, Laplace, Normal

from vaerun.assemble import build, checked
from vaerun.elbo import seeded


def direct(name: str, cfg, lik, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, written with torch.distributions alone."""
    d = x.shape[-1]
    mean = torch.sigmoid(out[:, :d])
    if name == "bernoulli":
        return Bernoulli(logits=out, validate_args=False).log_prob(x).sum(-1)
    if name == "continuous_bernoulli":
        return ContinuousBernoulli(logits=out).log_prob(x).sum(-1)
    if name == "laplace":
        return Laplace(mean, cfg.scale).log_prob(x).sum(-1)
    if name == "gaussian":
        sigma = lik.fixed_log_sigma.exp()
        return Normal(mean, sigma).log_prob(x).sum(-1)
    v = cfg.variance
    if v == "shared":
        sigma = lik.shared_log_sigma.exp()
    elif v == "optimal":
        sigma = (lik.mse_avg / lik.mse_weight).sqrt()
    elif v == "per_pixel":
        sigma = (cfg.min_log_sigma + torch.nn.functional.softplus(
            lik.pixel_log_sigma - cfg.min_log_sigma)).exp()
    else:
        sigma = (cfg.min_log_sigma + torch.nn.functional.softplus(
            out[:, d:] - cfg.min_log_sigma)).exp()
    return Normal(mean, sigma).log_prob(x).sum(-1)


RUNS = [
    ["likelihood=bernoulli"],
    ["likelihood=continuous_bernoulli"],
    ["likelihood=laplace"],
    ["likelihood=gaussian"],
    ["likelihood=gaussian", "loss.recon=sse", "loss.recon_over_pixels=mean"],
    *[["likelihood=gaussian_learned", f"likelihood.variance={v}"]
      for v in ("shared", "optimal", "per_pixel", "decoder")],
]


@pytest.mark.parametrize("overrides", RUNS, ids=lambda o: "-".join(a.split("=")[1] for a in o))
def test_logged_log_px_z_is_the_torch_distributions_value(vaerun, tmp_path, overrides):
    run = tmp_path / "run"
    assert vaerun("train", "dataset=mnist", *overrides, *SMALL, "trainer.epochs=1",
                  f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert all(math.isfinite(v) for k, v in m.items() if k.startswith("test/"))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    cfg = checked(OmegaConf.create(state["config"]))
    data, vae = build(cfg, torch.device("cpu"))
    vae.load_state_dict(state["model"])
    vae.eval()
    total = 0.0
    with torch.no_grad(), seeded(cfg.eval.seed, torch.device("cpu")):  # the evaluation's noise
        for i in range(0, len(data.test), cfg.trainer.eval_batch_size):
            x = data.test[i: i + cfg.trainer.eval_batch_size]
            out = vae.decode(vae.posterior(x).rsample())
            total += direct(cfg.likelihood.name, cfg.likelihood, vae.likelihood, out, x).sum().item()
    assert total / len(data.test) == pytest.approx(m["test/log_px_z"], rel=1e-5)


def test_continuous_bernoulli_run_logs_a_positive_log_normaliser(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", "likelihood=continuous_bernoulli", *SMALL, f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["test/log_norm_term"] > 784 * math.log(2)  # log C(λ) ≥ log 2 per pixel


fashion = pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")


@fashion
def test_fashion_mnist_from_the_debian_package(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", "dataset=fashion_mnist", "model=conv", "likelihood=gaussian",
                  *SMALL, f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and math.isfinite(m["test/elbo"])


@pytest.mark.parametrize("likelihood", ["discretized_logistic", "discretized_gaussian"])
def test_discrete_likelihoods_give_bits_per_8bit_pixel_on_grey_data(vaerun, tmp_path, likelihood):
    run = tmp_path / "run"
    assert vaerun("train", f"likelihood={likelihood}", *SMALL, f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert 0 < m["test/bits_per_dim"] < 8 and m["bits_per_dim_data"] == "8bit"
    assert m["test/bits_per_dim"] == pytest.approx(m["test/nll_iwae"] / (784 * math.log(2)))
    assert m["test/bits_per_dim_elbo"] == pytest.approx(-m["test/elbo"] / (784 * math.log(2)))
    assert m["test/bits_per_dim_elbo"] >= m["test/bits_per_dim"] - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["discretized_logistic", "discretized_gaussian"])
def test_issue_12_acceptance_commands(tmp_path, likelihood):
    """`vaerun train likelihood=... trainer.epochs=1 dataset.n_train=5000`, as the issue has it."""
    from conftest import run_process

    run = tmp_path / "run"
    proc = run_process(["train", f"likelihood={likelihood}", "trainer.epochs=1",
                        "dataset.n_train=5000", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert 0 < m["test/bits_per_dim"] < 8 and math.isfinite(m["test/bits_per_dim"])
