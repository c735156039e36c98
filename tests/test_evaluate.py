"""IWAE, bits/dim, active units and `vaerun eval`, checked against exact answers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import SMALL, run_process, scalars
from torch import nn
from torch.distributions import MultivariateNormal

from vaerun.data import MNIST, MNISTBinary
from vaerun.elbo import seeded
from vaerun.evaluation import iwae_nll, log_weights, posterior_stats
from vaerun.likelihoods import Gaussian, Likelihood
from vaerun.model import MLP, VAE


class IdentityMeanGaussian(Gaussian):
    """N(out, σ²I): a Gaussian whose mean is the decoder output itself (no sigmoid)."""

    name = "test_identity_gaussian"

    @dataclass
    class Config(Gaussian.Config):
        name: str = "test_identity_gaussian"

    def mean(self, out):
        return out


def linear_gaussian_vae(d=6, latent=2, sigma=0.5, widen=0.6, shift=0.3):
    """z ~ N(0, I), x|z ~ N(Wz + b, σ²I), so x ~ N(b, WWᵀ + σ²I) exactly. The encoder is the
    exact posterior, widened and shifted, so q ≠ p(z|x) and the ELBO is strictly below log p(x)."""
    torch.manual_seed(0)
    q_, _ = torch.linalg.qr(torch.randn(d, d))
    w = q_[:, :latent] * torch.tensor([2.0, 1.0])  # orthogonal columns: diagonal posterior
    b = torch.randn(d)
    lik = IdentityMeanGaussian(IdentityMeanGaussian.Config(sigma=sigma), d)
    vae = VAE(MLP.Config(hidden=4, latent_dim=latent), lik, (1, 1, d))
    vae.decoder = nn.Linear(latent, d)
    vae.decoder.weight.data, vae.decoder.bias.data = w.clone(), b.clone()
    post_var = 1 / (1 + (w * w).sum(0) / sigma**2)  # diag of (I + WᵀW/σ²)⁻¹
    gain = post_var[:, None] * w.T / sigma**2
    vae.encoder = nn.Linear(d, 2 * latent)
    vae.encoder.weight.data = torch.cat([gain, torch.zeros(latent, d)])
    vae.encoder.bias.data = torch.cat([-gain @ b + shift, post_var.log() + widen])
    exact = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d))
    return vae, exact


def test_iwae_converges_to_exact_log_likelihood_of_linear_gaussian():
    vae, exact = linear_gaussian_vae()
    x = exact.sample((64,))
    true_nll = -exact.log_prob(x).mean().item()
    nll = iwae_nll(vae, x, k=5000, batch_size=64, seed=0, progress=False).mean().item()
    with seeded(1, x.device):
        elbo = log_weights(vae, x, 1000).mean().item()  # E_q log w, the ELBO
    assert abs(nll - true_nll) < 0.5
    assert -elbo > true_nll + 0.1  # the ELBO is a strictly looser bound here
    assert nll < -elbo


def test_iwae_with_one_sample_is_the_single_sample_elbo():
    vae, exact = linear_gaussian_vae()
    x = exact.sample((32,))
    nll1 = iwae_nll(vae, x, k=1, batch_size=32, seed=7, progress=False)
    with seeded(7, x.device), torch.no_grad():
        q = vae.posterior(x)
        z = q.sample((1,))
        lw = vae.likelihood(vae.decode(z), x).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(nll1, -lw[0])


def test_chunks_are_sized_by_device():
    import vaerun.evaluation as ev

    assert ev.chunk_elements(torch.device("cpu")) == 1 << 21
    assert ev.chunk_elements(torch.device("cuda")) >= 64 * ev.chunk_elements(torch.device("cpu"))


def test_iwae_tightens_with_k_on_a_trained_model_and_bounded_memory_chunks():
    torch.manual_seed(0)
    data = MNISTBinary(MNISTBinary.Config(n_train=2000, n_test=200))
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    vae = VAE(MLP.Config(hidden=64, latent_dim=8), lik, (1, 28, 28))
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    gen = data.noise(0)
    from vaerun.config import LossConfig
    from vaerun.elbo import Objective, elbo_terms

    objective = Objective(LossConfig(), 1.0, 784, 8)

    for _ in range(3):
        for idx in torch.randperm(2000).split(100):
            loss = elbo_terms(vae, data.batch(idx, gen), objective)["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    nll = [iwae_nll(vae, data.test, k, 100, seed=0, progress=False).mean().item()
           for k in (1, 10, 100)]
    assert nll[0] > nll[1] > nll[2]
    import vaerun.evaluation as ev

    by_device = ev.chunk_elements
    try:  # chunking over samples changes nothing but memory
        ev.chunk_elements = lambda device: 784 * 100 * 3
        chunked = iwae_nll(vae, data.test, 100, 100, seed=0, progress=False).mean().item()
    finally:
        ev.chunk_elements = by_device
    assert chunked == pytest.approx(nll[2], abs=0.5)


def test_active_units_finds_dead_dimensions():
    torch.manual_seed(0)
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    vae = VAE(MLP.Config(hidden=32, latent_dim=6), lik, (1, 28, 28))
    last = vae.encoder[-1]
    with torch.no_grad():
        last.weight[[1, 4]] = 0  # μ of dims 1 and 4 ignores x: dead
        last.weight[:6] *= 20  # the others vary a lot across images
    x = torch.rand(300, 784)
    var, kl = posterior_stats(vae, x, 100)
    assert ((var > 0.01).nonzero().flatten().tolist()) == [0, 2, 3, 5]
    assert kl.shape == (6,) and (kl >= 0).all()


def test_bits_per_dim_by_hand():
    binary = MNISTBinary(MNISTBinary.Config(n_train=1, n_test=1))
    grey = MNIST(MNIST.Config(n_train=1, n_test=1))
    deq = MNIST(MNIST.Config(n_train=1, n_test=1, dequantize=True))
    bern = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    gauss = Likelihood.lookup("gaussian")(Likelihood.lookup("gaussian").Config(), 784)
    assert bern.bits_per_dim(100.0, binary.values)[0] == pytest.approx(100 / (784 * math.log(2)))
    assert gauss.bits_per_dim(-2000.0, deq.values)[0] == pytest.approx(
        (-2000 + 784 * math.log(256)) / (784 * math.log(2)))
    for data, lik in ((grey, bern), (deq, bern), (grey, gauss), (binary, gauss)):
        value, why = lik.bits_per_dim(100.0, data.values)
        assert value is None and why


def test_eval_command_end_to_end(vaerun, tmp_path, capsys):
    run = tmp_path / "run"
    assert vaerun("train", "dataset=mnist_binary", *SMALL, f"hydra.run.dir={run}") == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["test/iwae_k"] == 4 and "test/bits_per_dim" in trained
    assert vaerun("eval", f"run_dir={run}", "eval.iwae_k=50") == 0
    assert "test/nll_iwae" in capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    assert m["test/iwae_k"] == 50 and m["status"] == "finished"
    assert -m["test/elbo"] >= m["test/nll_iwae"]
    assert m["test/bits_per_dim"] == pytest.approx(m["test/nll_iwae"] / (784 * math.log(2)))
    assert m["test/nll_iwae"] <= trained["test/nll_iwae"] + 1.0  # more samples, tighter
    ev = scalars(run)
    assert ev["test/nll_iwae"][-1][1] == pytest.approx(m["test/nll_iwae"], rel=1e-6)
    assert ev["test/active_units"][-1][1] == m["test/active_units"]
    for name in ("reconstructions", "samples", "traversals", "kl_per_dim"):
        assert (run / "images" / f"{name}.png").stat().st_size > 100


def test_bits_per_dim_present_only_where_it_means_something(vaerun, tmp_path):
    deq, grey = tmp_path / "deq", tmp_path / "grey"
    assert vaerun("train", "dataset=mnist", "dataset.dequantize=true",
                  "likelihood=gaussian_learned", *SMALL, f"hydra.run.dir={deq}") == 0
    m = json.loads((deq / "metrics.json").read_text())
    assert m["test/bits_per_dim"] == pytest.approx(
        (m["test/nll_iwae"] + 784 * math.log(256)) / (784 * math.log(2)), rel=1e-9)
    assert vaerun("train", "dataset=mnist", "likelihood=bernoulli", *SMALL,
                  f"hydra.run.dir={grey}") == 0
    assert "test/bits_per_dim" not in json.loads((grey / "metrics.json").read_text())
    assert "no test/bits_per_dim: likelihood=bernoulli on pixel values in [0, 1]" in (
        grey / "train.log").read_text()


def test_images_and_hparams_in_tensorboard(vaerun, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    assert vaerun("train", "likelihood=gaussian", "likelihood.sigma=0.3", *SMALL,
                  f"hydra.run.dir={run}") == 0
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert {"images/reconstructions", "images/samples", "images/traversals",
            "images/kl_per_dim"} <= set(acc.Tags()["images"])
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["likelihood"].string_value == "gaussian"
    assert start.hparams["likelihood.sigma"].number_value == pytest.approx(0.3)
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    # no extra run directory, as SummaryWriter.add_hparams would make
    assert not [p for p in run.iterdir() if p.is_dir() and p.name[:1].isdigit()]


@pytest.mark.parametrize("args, key", [
    ([], "run_dir is required"),
    (["run_dir=/nonexistent/run"], "run_dir=/nonexistent/run is not a directory"),
    (["run_dir=."], "holds no checkpoint"),
])
def test_eval_bad_input(tmp_path, args, key):
    proc = run_process(["eval", *args], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert key in proc.stderr


@pytest.mark.parametrize("n, nrow, pad", [(13, 8, 1.0), (8, 4, 0.0), (2, 8, 0.5)])  # (n = 1: unpadded)
def test_make_grid_is_torchvisions_layout(n, nrow, pad):
    from torchvision.utils import make_grid as torchvision_grid

    from vaerun.pictures import make_grid

    x = torch.rand(n, 1, 5, 7)
    torch.testing.assert_close(make_grid(x, nrow=nrow, pad_value=pad),
                               torchvision_grid(x, nrow=nrow, pad_value=pad))


def test_kl_bar_chart_draws_each_dimension_as_tall_as_its_kl():
    from vaerun.pictures import kl_bar_chart

    kl = [1.0, 2.0, 0.5, 1.5]
    img = kl_bar_chart(torch.tensor(kl))  # [3, H, W] in [0, 1]
    blue = ((img * 255).round() == torch.tensor([31.0, 119.0, 180.0])[:, None, None]).all(0)
    columns = blue.sum(0)  # the bar's height in pixels in each column
    bars, current = [], []
    for height in columns.tolist():  # the runs of columns that hold a bar
        if height:
            current.append(height)
        elif current:
            bars.append(max(current))
            current = []
    assert len(bars) == len(kl)
    for value, height in zip(kl, bars, strict=True):
        assert height == pytest.approx(bars[1] * value / 2.0, abs=1)


def test_the_cheaper_iwae_estimates_what_the_plain_one_does():
    """The chunked IWAE (posterior once per batch, small chunks) against
    the plain estimator written out here with torch.distributions alone (all k samples at
    once): equal within 3 standard errors of the Monte Carlo error, measured over seeds."""
    from torch.distributions import Bernoulli, Independent, Normal

    torch.manual_seed(0)
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    vae = VAE(MLP.Config(hidden=64, latent_dim=8), lik, (1, 28, 28)).eval()
    x = MNISTBinary(MNISTBinary.Config(n_train=1, n_test=300)).test

    def plain(seed: int) -> float:
        with seeded(seed, x.device), torch.no_grad():
            mu, logvar = vae.encoder(x).chunk(2, dim=-1)
            q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
            z = q.sample((100,))
            p_x = Independent(Bernoulli(logits=vae.decoder(z), validate_args=False), 1)
            prior = Independent(Normal(torch.zeros(8), torch.ones(8)), 1)
            lw = p_x.log_prob(x) + prior.log_prob(z) - q.log_prob(z)
            return -(lw.logsumexp(0) - math.log(100)).mean().item()

    new = [iwae_nll(vae, x, 100, 64, seed=s, progress=False).mean().item() for s in range(5)]
    old = [plain(s) for s in range(5)]
    se = (torch.tensor(new + old).std() / math.sqrt(5)).item()
    assert abs(sum(new) / 5 - sum(old) / 5) < 3 * math.sqrt(2) * se
    assert se > 0  # the seeds differ: a real Monte Carlo error was measured


def test_the_documented_inception_weights_key_is_taken_by_train_and_eval(vaerun, tmp_path,
                                                                         capsys):
    """`eval.inception_weights=PATH`, as docs/images.md and the run's note write it, was
    refused ("not a key of this config (did you mean loss.recon_weight?)"): only
    +eval.inception_weights worked, and `vaerun eval` took neither form. Both now take it, for a
    run saved before the key was in conf/train.yaml too; without torch-fidelity it is refused
    before training, not after it."""
    import importlib.util

    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", "eval.quality_images=0",
                  f"eval.inception_weights={weights}", f"hydra.run.dir={run}") == 0
    saved = torch.load(run / "checkpoints" / "last.pt")
    assert saved["config"]["eval"]["inception_weights"] == str(weights)
    del saved["config"]["eval"]["inception_weights"]  # a run saved before the key was there
    torch.save(saved, run / "checkpoints" / "last.pt")
    config = run / ".hydra" / "config.yaml"  # and its record
    config.write_text("".join(ln for ln in config.read_text().splitlines(True)
                              if "inception_weights" not in ln))
    assert vaerun("eval", f"run_dir={run}", "eval.iwae_k=0", "eval.quality_images=0",
                  f"eval.inception_weights={weights}") == 0
    capsys.readouterr()
    if importlib.util.find_spec("torch_fidelity") is None:  # images not digits: Inception
        from PIL import Image

        photos = tmp_path / "photos"
        photos.mkdir()
        for i in range(4):
            Image.new("RGB", (12, 12), (60 * i, 0, 0)).save(photos / f"{i}.png")
        assert vaerun("train", "dataset=images", f"dataset.root={photos}", "dataset.size=8",
                      "trainer.batch_size=2", "eval.quality_images=100",
                      f"eval.inception_weights={weights}", f"hydra.run.dir={tmp_path / 'r2'}") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: eval.inception_weights=") and "pip install torch-fidelity" \
            in err and "\n" not in err
        assert not (tmp_path / "r2").exists()


def test_a_finished_run_resumed_with_other_eval_keys_says_how_to_evaluate_it(vaerun, tmp_path):
    """`trainer.resume=true eval.iwae_k=50` on a finished run did nothing and said only
    "nothing to do": the eval keys were dropped in silence. The log names them and the
    `vaerun eval` line that uses them, which then measures what it says."""
    run = tmp_path / "run"
    args = [*SMALL, "trainer.epochs=1", "eval.iwae_k=0", "eval.quality_images=0",
            f"hydra.run.dir={run}"]
    assert vaerun("train", *args) == 0
    assert vaerun("train", *args, "trainer.resume=true", "eval.iwae_k=5") == 0
    said = [ln for ln in (run / "train.log").read_text().splitlines() if "not redone" in ln]
    assert len(said) == 1 and said[0].endswith(
        f"its evaluation is not redone for eval.iwae_k=5: `vaerun eval run_dir={run} "
        "eval.iwae_k=5` evaluates it again")
    assert "test/nll_iwae" not in json.loads((run / "metrics.json").read_text())
    assert vaerun("eval", f"run_dir={run}", "eval.iwae_k=5") == 0
    assert "test/nll_iwae" in json.loads((run / "metrics.json").read_text())
    assert vaerun("train", *args, "trainer.resume=true") == 0  # the same keys: nothing to say
    assert vaerun("train", *args, "trainer.resume=true", "eval.iwae_k=5") == 0  # measured by
    assert len([ln for ln in (run / "train.log").read_text().splitlines() if "not redone" in ln
                ]) == 1  # the eval above: nothing to say either
