"""The second axis: the shipped classifier, the Fréchet distance on its features (torchmetrics),
the scores every evaluation logs, and draws beside means in the pictures."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
import torch
from conftest import SMALL

from vaerun import quality
from vaerun.data import MNIST, read_idx


@pytest.fixture(scope="module")
def mnist():
    return MNIST(MNIST.Config())


def labels(name: str) -> torch.Tensor:
    from pathlib import Path

    path = Path(str(resources.files("vaerun.bundled") / "mnist" / f"{name}.gz"))
    return torch.from_numpy(read_idx(path, None, "").copy()).long()


def test_the_shipped_classifier_loads_checked_and_reads_digits(mnist):
    blob = (resources.files("vaerun.bundled") / "classifier" / quality.WEIGHTS).read_bytes()
    assert len(blob) < 2_000_000 and hashlib.sha256(blob).hexdigest() == quality.WEIGHTS_SHA256
    model = quality.load_classifier()
    with torch.no_grad():
        hits = sum((model(mnist.test[i: i + 1000]).argmax(-1) == labels(
            "t10k-labels-idx1-ubyte")[i: i + 1000]).sum().item() for i in range(0, 10000, 1000))
    assert hits / 10000 >= 0.99


def test_the_frechet_distance_is_zero_to_itself_small_to_training_images_large_to_noise(mnist):
    metric = quality.fid_metric("test-mnist", mnist.test)
    itself, entropy = quality.frechet(metric, mnist.test)
    training, _ = quality.frechet(metric, mnist.train[:10000])
    noise, _ = quality.frechet(metric, torch.rand(10000, 784,
                                                  generator=torch.Generator().manual_seed(0)))
    assert abs(itself) < 1e-3
    assert 0 < training < 20 and noise > 100 * training, (training, noise)
    assert entropy == pytest.approx(quality.MAX_ENTROPY, abs=0.01)  # the test digits: balanced


def test_a_trained_model_draws_far_better_digits_than_an_untrained_one(vaerun, tmp_path):
    got = {}
    for epochs in (0, 1):
        run = tmp_path / f"e{epochs}"
        assert vaerun("train", *SMALL, "dataset.n_train=60000", "dataset.n_test=10000",
                      "trainer.batch_size=128",
                      "eval.quality_images=10000", f"trainer.epochs={epochs}",
                      f"hydra.run.dir={run}") == 0
        got[epochs] = json.loads((run / "metrics.json").read_text())
    for key in ("test/fid_mean", "test/fid_sample", "test/fid_recon"):
        assert got[1][key] < 0.6 * got[0][key], key
    assert got[0]["test/sample_class_entropy"] < 1 < got[1]["test/sample_class_entropy"] <= 2.303
    assert all(0 < g["test/quality_seconds"] < 600 for g in got.values())


def test_the_samples_show_a_draw_beside_each_mean():
    from vaerun.likelihoods import Likelihood
    from vaerun.model import MLP, VAE
    from vaerun.pictures import samples

    torch.manual_seed(0)
    lik = Likelihood.lookup("bernoulli")(Likelihood.lookup("bernoulli").Config(), 784)
    vae = VAE(MLP.Config(hidden=16, latent_dim=4), lik, (1, 28, 28)).eval()
    img = samples(vae, 16)  # 2 rows of means, each above a row of its draws
    grid_rows = (img.shape[1] - 16 - 2 - 2) // 30
    assert grid_rows == 4
    left = img.shape[2] - (2 + 8 * 30)
    top = img.shape[1] - (2 + 4 * 30) - 2
    draws = img[0, top + 2 + 30: top + 30 + 30, left + 2: left + 30]  # the first draw
    values = set(torch.round(draws * 255).unique().tolist())
    assert values <= {0.0, 255.0}  # a Bernoulli's draw is binary; its mean is not
    means = img[0, top + 2: top + 30, left + 2: left + 30]
    assert len(torch.round(means * 255).unique()) > 2
