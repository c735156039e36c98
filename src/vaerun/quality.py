"""Sample quality without a download: a small MNIST classifier shipped in the package, and the
Fréchet distance of its penultimate features (torchmetrics' FrechetInceptionDistance with
`feature` set to it), against the 10,000 test images:

    test/fid_mean     10,000 decoder means f(z) of z ~ p(z)
    test/fid_sample   10,000 draws x ~ p(x|z) of the same z
    test/fid_recon    the reconstructions f(E_q[z|x]) of the test images
    test/sample_class_entropy   the entropy (nats) of the classifier's predicted-class histogram
                      over the decoder means of z ~ p(z): log 10 = 2.303 when every digit is
                      drawn equally often

The features are those of `Classifier`, trained by scripts/train_classifier.py; the test
images' statistics are computed once per data set in a process and kept (as pPCA's spectrum).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from importlib import resources

import torch
from torch import Tensor, nn

from vaerun.errors import ConfigError, DataError

WEIGHTS = "lenet.pt"
# SHA-256 of the shipped weights (bundled/classifier/lenet.pt), checked when they are loaded
WEIGHTS_SHA256 = "4ca0f56b877c59c89c28ec571cc239a0c6966fdaccce4099fcdf957b33fc43cb"
FEATURES = 128


class Classifier(nn.Module):
    """A LeNet-sized CNN for 28×28 digits: two 5×5 convolutions of stride 2 (16 and 32
    channels, 28 → 14 → 7), a 128-unit layer (the features), 10 logits: about 0.9 million
    multiply-adds an image, so scoring 30,000 images stays a small part of an evaluation."""

    num_features = FEATURES  # what torchmetrics reads instead of running a dummy image

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        """[N, 784] or [N, 1, 28, 28] pixels in [0, 1] -> [N, 128] features."""
        return self.body(x.reshape(-1, 1, 28, 28))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    """The classifier's penultimate features, as torchmetrics' `feature` module; it also
    counts the classes they predict (`counts`), so one pass gives both scores."""

    num_features = FEATURES

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.counts = torch.zeros(10)

    def forward(self, x: Tensor) -> Tensor:
        f = self.classifier.features(x)
        self.counts = self.counts.to(f.device) + torch.bincount(
            self.classifier.head(f).argmax(-1), minlength=10)
        return f


def load_classifier(device: torch.device | str = "cpu") -> Classifier:
    """The shipped classifier, its weights' SHA-256 checked, in eval mode on `device`."""
    path = resources.files("vaerun.bundled") / "classifier" / WEIGHTS
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"the classifier's weights ({path}) are missing ({e.strerror}); "
                        "reinstall vaerun") from None
    if hashlib.sha256(blob).hexdigest() != WEIGHTS_SHA256:
        raise DataError(f"the classifier's weights ({path}) fail their SHA-256 check; "
                        "reinstall vaerun")
    import io

    model = Classifier()
    model.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
    return model.to(device).eval()


_METRICS: dict[str, object] = {}  # one FID metric per data set, its real (test) half kept


def fid_metric(key: str, test: Tensor, batch_size: int = 1000):
    """torchmetrics' FrechetInceptionDistance on the classifier's features, with the test
    images `test` as its real half, made once per `key` (the data set) in a process."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if key not in _METRICS:
        _METRICS.clear()
        metric = FrechetInceptionDistance(feature=_Features(load_classifier(test.device)),
                                          reset_real_features=False).to(test.device)
        with torch.no_grad():
            for i in range(0, len(test), batch_size):
                metric.update(test[i: i + batch_size], real=True)
        _METRICS[key] = metric
    return _METRICS[key]


def by_digits(name: str, shape: tuple[int, ...]) -> bool:
    """Whether vaerun's digit classifier scores these images (28×28 grey MNIST), not Inception."""
    return tuple(shape) == (1, 28, 28) and name.startswith("mnist")


def check_inception(path: str) -> None:
    """Refuse Inception weights torchmetrics cannot use here, before a run trains."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ConfigError("eval.inception_weights", path, "torchmetrics' Inception features "
                          "need torch-fidelity: pip install torch-fidelity (or "
                          "eval.quality_images=0: no sample quality)")


def inception_metric(path: str, test: Tensor, shape: tuple[int, ...], batch_size: int = 100):
    """torchmetrics' FrechetInceptionDistance in Inception v3's features, from the weights file
    `path` (nothing is downloaded), the test images `test` ([N, D], `shape` each) its real half."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, reset_real_features=False,
            feature_extractor_weights_path=os.path.expanduser(path)).to(test.device)
    except (ImportError, ModuleNotFoundError, RuntimeError) as e:
        raise ConfigError("eval.inception_weights", path, f"torchmetrics' Inception features "
                          f"could not be built ({str(e).splitlines()[0]}); they need "
                          "torch-fidelity: pip install torch-fidelity") from None
    metric.image_shape = shape
    with torch.no_grad():
        for i in range(0, len(test), batch_size):
            metric.update(_rgb(metric, test[i: i + batch_size]), real=True)
    return metric


def _rgb(metric, x: Tensor) -> Tensor:
    """[N, D] pixels as the [N, 3, H, W] images an Inception metric takes (others: as they are)."""
    shape = getattr(metric, "image_shape", None)
    return x if shape is None else x.reshape(-1, *shape).expand(-1, 3, -1, -1)


@torch.no_grad()
def frechet(metric, images: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """The Fréchet distance of `images` ([N, D] in [0, 1]) to the metric's real images, and
    the entropy (nats) of the classes the classifier predicts for them (log 10 at most; NaN in
    Inception's features, which predict no digit)."""
    metric.reset()
    counts = getattr(metric.inception, "counts", None)
    if counts is not None:
        counts.zero_()
    for i in range(0, len(images), batch_size):
        metric.update(_rgb(metric, images[i: i + batch_size].clamp(0, 1)), real=False)
    entropy = math.nan
    if counts is not None:  # (the classifier's counts, as they are after the updates)
        counts = metric.inception.counts
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return metric.compute().item(), entropy


MAX_ENTROPY = math.log(10)
