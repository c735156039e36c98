"""Decoder likelihoods p(x|z): each maps the decoder's output to a `torch.distributions`
distribution over the D pixels, whose `log_prob(x)` is log p(x|z) in nats per image.

The decoder's location outputs reach a likelihood through the model's output link (`sigmoid`:
means in (0, 1); `identity`: unconstrained, as the linear VAE needs). Bernoulli-type
likelihoods take the outputs as logits whatever the link.

A new likelihood is one subclass here (a `name`, a `Config`, `forward`) plus one yaml file in
conf/likelihood/.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli as BernoulliDist
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import Laplace as LaplaceDist

from vaerun.config import Registered, require, require_at_least, require_positive
from vaerun.distributions import (
    BinnedLogistic,
    BinnedNormal,
    PixelMixture,
    StableContinuousBernoulli,
)
from vaerun.distributions import (
    Logistic as LogisticDist,
)

LOG_2PI = math.log(2 * math.pi)
LINKS = {"sigmoid": torch.sigmoid, "identity": lambda t: t}
MAX_LOG_SCALE = 20.0  # discretized scales stop at e^20: beyond e^88 float32 overflows to inf
# The discretized likelihoods' floor on the log scale, on the data's own [0, 1]: a little looser
# than PixelCNN++'s -7 on its [-1, 1] (-7.69 here, where an interior grey level could take at
# most 0.973 of the mass, and a soft floor a little less); at -8, 0.994.
SCALE_FLOOR = -8.0


def pixels(base: Distribution) -> Distribution:
    """Treat the last axis (the D pixels) as one event: log_prob sums over pixels."""
    return Independent(base, 1, validate_args=False)


def soft_floor(raw: Tensor, m: float | None) -> Tensor:
    """A soft lower bound: m + softplus(raw − m) ≥ m, ≈ raw well above m (raw if m is None)."""
    return raw if m is None else m + F.softplus(raw - m)


def constant(module: nn.Module, name: str, value: float) -> None:
    """A fixed number as a 0-dim float32 buffer (moved with the module, not saved in its
    state): a likelihood that builds its distribution from a Python number would make a new
    tensor, and on a GPU a host-to-device copy, at every step."""
    module.register_buffer(name, torch.tensor(float(value)), persistent=False)


def require_floor(key: str, value: float | None) -> None:
    require(value is None or math.isfinite(value), key, value,
            "must be a finite number (or null: no bound)")


@dataclass
class LikelihoodConfig:
    name: str = ""


class Likelihood(Registered, nn.Module):
    """p(x|z) from the decoder output `out` of shape [B, params_per_pixel * D].

    `support` says what p(x|z) is normalised over, and so which data its nats are a probability
    of: "binary" (a mass function on {0, 1}^D), "8bit" (a mass function on the 256 grey levels
    k/255) or "real" (a density). Data say the same of themselves with `Dataset.values`."""

    registry: ClassVar[dict[str, type]] = {}
    group = "likelihood"
    Config = LikelihoodConfig
    params_per_pixel: ClassVar[int] = 1
    support: ClassVar[str] = "real"
    batch_statistics: ClassVar[bool] = False  # forward(out, x, mask): p(x|z) depends on the batch

    def __init__(self, cfg: LikelihoodConfig, dim: int, link: str = "sigmoid"):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.dim = dim
        self.link = LINKS[link]

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        """The distribution p(x|z) for a batch (x is used only by likelihoods fitted to it)."""
        raise NotImplementedError

    def mean(self, out: Tensor, dist: Distribution | None = None) -> Tensor:
        """The decoder mean f(z): the reconstruction (`dist`: this likelihood's p(x|z) for
        `out`, if already built)."""
        return self.link(out[..., : self.dim])

    def terms(self, out: Tensor, x: Tensor, dist: Distribution | None = None) -> dict[str, Tensor]:
        """Extra per-image terms worth logging (nats per image unless named otherwise); `dist`:
        this likelihood's p(x|z) for `out`, if already built."""
        return {}

    def pixel_report(self, pixel_mse: Tensor) -> dict[str, float]:
        """Test-set numbers that need each pixel's MSE over the images (none by default)."""
        return {}

    def param_groups(self) -> list[dict]:
        """Optimiser groups for parameters that need their own learning rate."""
        return []

    # -- what the training loop and the evaluation ask of a likelihood ------------------------
    def explain(self, values: str) -> str | None:
        """A one-time note on what this likelihood is for data whose values are `values`."""
        if self.support == "binary" and values != "binary":
            return (f"likelihood={self.name} on grey values, as the PyTorch examples VAE has it "
                    "(vaerun's default reproduces it on purpose): log p(x|z) = -BCE is not a "
                    "normalised density on [0, 1], so its nats are no log-likelihood of these "
                    "data; for one, use likelihood=continuous_bernoulli or dataset=mnist_binary")
        if self.support == "8bit" and values != "8bit":
            return (f"likelihood={self.name} is a distribution over the 256 grey levels k/255 "
                    f"and these data are {values}: each value counts as its nearest grey level, "
                    "and no bits/dim is reported")
        return None

    def nonfinite_hint(self) -> str | None:
        """What to change when the loss goes non-finite, if this likelihood knows (else None)."""
        return None

    def isotropic_sigma(self) -> tuple[float, bool] | None:
        """(σ, learned) when p(x|z) = N(f(z), σ²I) with one σ for every pixel and image (the
        pPCA reference and the linear VAE's exact likelihood need it), else None."""
        return None

    def bits_per_dim(self, nll: float, values: str) -> tuple[float | None, str]:
        """Bits per dimension of data whose values are `values` ("binary", "8bit" or
        "continuous": dequantised to (k + u)/256), from an nll in nats per image; or None and
        the reason why it would mean nothing."""
        d, ln2 = self.dim, math.log(2)
        if values == "binary":
            if self.support == "binary":
                return nll / (d * ln2), ""
            return None, (f"likelihood={self.name} is not a distribution over binary images, "
                          "so its nats are no probability of these data")
        if self.support == "binary":
            return None, (f"likelihood={self.name} on pixel values in [0, 1] is not a "
                          "normalised density of them; for bits/dim, binary images "
                          "(dataset=mnist_binary) or a density with dataset.dequantize=true")
        if values == "8bit":
            if self.support == "8bit":
                return nll / (d * ln2), ""
            return None, ("pixel values k/255 are discrete, so a density's nats are no "
                          "probability of them; set dataset.dequantize=true for bits/dim")
        if self.support == "real":  # x = (k + u)/256: p(k) >= density * (1/256)^D
            return (nll + d * math.log(256)) / (d * ln2), ""
        return None, (f"likelihood={self.name} is a distribution over the 256 grey levels; the "
                      "data are dequantised: set dataset.dequantize=false")


class Bernoulli(Likelihood):
    """log p(x|z) = Σ x log μ + (1−x) log(1−μ) = −BCE(μ, x), μ = sigmoid(out). A normalised
    distribution on binary images only; on grey values it is not a density (see
    continuous_bernoulli)."""

    name = "bernoulli"
    support = "binary"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "bernoulli"

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        return pixels(BernoulliDist(logits=out, validate_args=False))


class ContinuousBernoulli(Likelihood):
    """The Bernoulli made a density on [0, 1] (Loaiza-Ganem & Cunningham 2019):
    log p = −BCE(λ, x) + log C(λ), log C(L) = log|L| − log tanh(|L|/2) from the logit L;
    `log_norm_term` = Σ log C is what BCE leaves out. On data with exact zeros (or ones) it is
    unbounded above (p(0) → ∞ as L → −∞): dequantised data are its fair test."""

    name = "continuous_bernoulli"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "continuous_bernoulli"

    @staticmethod
    def dist(out: Tensor) -> StableContinuousBernoulli:
        return StableContinuousBernoulli(logits=out, validate_args=False)

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        return pixels(self.dist(out))

    def mean(self, out: Tensor, dist: Distribution | None = None) -> Tensor:
        return self.dist(out).mean

    def terms(self, out: Tensor, x: Tensor, dist: Distribution | None = None) -> dict[str, Tensor]:
        return {"log_norm_term": self.dist(out)._cont_bern_log_norm().sum(-1)}


class Laplace(Likelihood):
    """p(x|z) = Laplace(f(z), b): log p = −‖x − f(z)‖₁/b − D·log(2b), the L1 loss as a likelihood."""

    name = "laplace"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "laplace"
        scale: float = 0.1

        def check(self, key: str) -> None:
            require_positive(f"{key}.scale", self.scale)

    def __init__(self, cfg: Config, dim: int, link: str = "sigmoid"):
        super().__init__(cfg, dim, link)
        constant(self, "scale", cfg.scale)

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        return pixels(LaplaceDist(self.mean(out), self.scale, validate_args=False))


class Gaussian(Likelihood):
    """p(x|z) = N(f(z), σ²I): log p = −‖x − f(z)‖²/(2σ²) − (D/2)·log(2πσ²) nats per image,
    logged as `sse_term` + `log_norm_term`. σ weighs reconstruction against KL as β = 2σ²."""

    name = "gaussian"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "gaussian"
        sigma: float = 0.1

        def check(self, key: str) -> None:
            require_positive(f"{key}.sigma", self.sigma)

    def __init__(self, cfg: Config, dim: int, link: str = "sigmoid"):
        super().__init__(cfg, dim, link)
        constant(self, "fixed_log_sigma", 0.5 * math.log(self.variance()))

    def isotropic_sigma(self) -> tuple[float, bool] | None:
        return math.sqrt(self.variance()), False

    def nonfinite_hint(self) -> str | None:
        per_pixel = 1 / (2 * self.variance())  # nats for a squared error of 1 on one pixel
        if per_pixel * self.dim > 1e30:  # float32 ends at 3.4e38
            return (f"likelihood.sigma={self.cfg.sigma:g} prices a squared error of 1 on each "
                    f"pixel at {per_pixel * self.dim:.2g} nats (float32 ends at 3.4e38): give "
                    "a larger likelihood.sigma")
        return None

    def variance(self) -> float:
        """σ² = likelihood.sigma²."""
        return self.cfg.sigma**2

    def calibrated(self, sigma: float) -> None:
        """Set the fixed σ (post-hoc calibration, after training)."""
        self.fixed_log_sigma.fill_(math.log(sigma))

    def log_sigma(self, out: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """log σ, broadcastable to [B, D]."""
        return self.fixed_log_sigma

    def forward(self, out: Tensor, x: Tensor, mask: Tensor | None = None) -> Distribution:
        return pixels(Normal(self.mean(out), self.log_sigma(out, x, mask).exp(),
                             validate_args=False))

    def terms(self, out: Tensor, x: Tensor, dist: Distribution | None = None) -> dict[str, Tensor]:
        if dist is None:
            mean, log_sigma = self.mean(out), self.log_sigma(out, x).expand_as(x)
        else:  # the σ and mean p(x|z) was built with (a batch statistic: with its mask)
            mean, log_sigma = dist.base_dist.loc, dist.base_dist.scale.log().expand_as(x)
        sq = (x - mean).square()
        return {
            "sigma": log_sigma.mean(-1).exp(),  # geometric mean over pixels
            "sse_term": -(sq * torch.exp(-2 * log_sigma)).sum(-1) / 2,
            "log_norm_term": -(log_sigma + 0.5 * LOG_2PI).sum(-1),
        }


class Variance(str, enum.Enum):
    shared = "shared"  # one learned scalar log σ
    optimal = "optimal"  # σ² = the batch's per-pixel MSE, detached (σ-VAE, Rybkin et al. 2021)
    per_pixel = "per_pixel"  # D learned log σ, one per pixel
    decoder = "decoder"  # the decoder outputs a log σ per pixel (2·D outputs)


class GaussianLearned(Gaussian):
    """N(f(z), σ²I) with σ learned: at the optimum σ*² = the per-pixel MSE, so σ calibrates
    the decoder. `shared` learns log σ by gradient; `optimal` sets it in closed form;
    `per_pixel` and `decoder` learn one σ per pixel, softly bounded below by `min_log_sigma`
    (log σ = m + softplus(raw − m)): else pixels that are always 0 drive log p(x|z) to +∞."""

    name = "gaussian_learned"
    batch_statistics = True  # variance=optimal: σ² is the batch's MSE

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "gaussian_learned"
        variance: Variance = Variance.shared
        init_sigma: float = 1.0
        sigma_lr: float = 0.01
        ema: float = 0.05
        min_log_sigma: float | None = -6.0
        # variance=optimal: the soft floor on its log σ too, as sigma-vae-pytorch's softclip
        floor_optimal: bool = False

        def check(self, key: str) -> None:
            require_positive(f"{key}.init_sigma", self.init_sigma)
            require_floor(f"{key}.min_log_sigma", self.min_log_sigma)
            require_positive(f"{key}.sigma_lr", self.sigma_lr)
            require(0 < self.ema <= 1, f"{key}.ema", self.ema, "must be in (0, 1]")

    def __init__(self, cfg: Config, dim: int, link: str = "sigmoid"):
        super().__init__(cfg, dim, link)
        init = torch.tensor(math.log(cfg.init_sigma))
        if cfg.variance == Variance.shared:
            self.shared_log_sigma = nn.Parameter(init)
        elif cfg.variance == Variance.per_pixel:
            self.pixel_log_sigma = nn.Parameter(init.repeat(dim))
        elif cfg.variance == Variance.decoder:
            self.params_per_pixel = 2  # the decoder's second D outputs are raw log σ
        # `optimal` at test time: σ² from a (debiased) moving average of the training batches'
        # per-pixel MSE, so the test likelihood is that of a fixed model, never fitted to test data.
        self.register_buffer("mse_avg", torch.zeros(()))
        self.register_buffer("mse_weight", torch.zeros(()))

    def variance(self) -> float:
        """σ² before anything is learned: init_sigma²."""
        return self.cfg.init_sigma**2

    @property
    def per_pixel(self) -> bool:
        return self.cfg.variance in (Variance.per_pixel, Variance.decoder)

    def terms(self, out: Tensor, x: Tensor, dist: Distribution | None = None) -> dict[str, Tensor]:
        terms = super().terms(out, x, dist)
        if self.per_pixel:  # a geometric mean over pixels: no σ to hold against sqrt(mse)
            terms["sigma_geomean"] = terms.pop("sigma")
        return terms

    def pixel_report(self, pixel_mse: Tensor) -> dict[str, float]:
        """For per-pixel σ: the geometric mean of the per-pixel optimum σ_i*² = MSE_i (with the
        same soft floor), the number to hold `sigma_geomean` against."""
        if not self.per_pixel:
            return {}
        log_opt = self.bounded(0.5 * pixel_mse.clamp_min(1e-30).log())
        return {"sigma_optimal_geomean": log_opt.mean().exp().item()}

    def isotropic_sigma(self) -> tuple[float, bool] | None:
        v = self.cfg.variance
        if v == Variance.shared:
            return math.exp(self.shared_log_sigma.item()), True
        if v == Variance.optimal and not self.training:
            return math.exp(self.test_log_sigma().item()), True
        return None

    def nonfinite_hint(self) -> str | None:
        if self.cfg.variance in (Variance.per_pixel, Variance.decoder) and \
                self.cfg.min_log_sigma is None:
            return ("per-pixel sigmas need a lower bound: set likelihood.min_log_sigma (e.g. -6), "
                    "else sigma -> 0 on always-black pixels")
        return None

    def bounded(self, raw: Tensor) -> Tensor:
        return soft_floor(raw, self.cfg.min_log_sigma)

    def batch_mse(self, out: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """The batch's per-pixel MSE of the decoder mean (detached), over its images: the rows
        `mask` marks where the batch is padded to one shape."""
        per_image = (self.mean(out).detach() - x).square().mean(-1)
        return per_image.mean() if mask is None else (per_image * mask).sum() / mask.sum()

    def log_sigma(self, out: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        v = self.cfg.variance
        if v == Variance.shared:
            return self.shared_log_sigma
        if v == Variance.per_pixel:
            return self.bounded(self.pixel_log_sigma)
        if v == Variance.decoder:
            return self.bounded(out[..., self.dim: 2 * self.dim] + math.log(self.cfg.init_sigma))
        if self.training:
            log_sigma = 0.5 * self.batch_mse(out, x, mask).clamp_min(1e-12).log()
            return self.bounded(log_sigma) if self.cfg.floor_optimal else log_sigma
        return self.test_log_sigma()

    def test_log_sigma(self) -> Tensor:
        """`optimal` at test time: log σ from the training batches' averaged MSE, or
        init_sigma before any training step (nothing to average; never the test data)."""
        w = self.mse_weight
        mse = (self.mse_avg / w.clamp_min(1e-30)).clamp_min(1e-12)
        log_sigma = self.bounded(0.5 * mse.log()) if self.cfg.floor_optimal else 0.5 * mse.log()
        return torch.where(w > 0, log_sigma, self.fixed_log_sigma)

    def forward(self, out: Tensor, x: Tensor, mask: Tensor | None = None) -> Distribution:
        if self.training and self.cfg.variance == Variance.optimal:
            with torch.no_grad():
                m = self.cfg.ema
                self.mse_avg.mul_(1 - m).add_(m * self.batch_mse(out, x, mask))
                self.mse_weight.mul_(1 - m).add_(m)
        return super().forward(out, x, mask)

    def param_groups(self) -> list[dict]:
        if self.cfg.variance == Variance.shared:
            return [{"params": [self.shared_log_sigma], "lr": self.cfg.sigma_lr}]
        if self.cfg.variance == Variance.per_pixel:
            return [{"params": [self.pixel_log_sigma], "lr": self.cfg.sigma_lr}]
        return []


class DiscretizedLogistic(Likelihood):
    """A mixture of `components` logistics per pixel, each integrated over the pixel's bin
    (width 1/255 around k/255, edge bins to ±∞; PixelCNN++): a probability mass on the 256 grey
    levels, so −log p(x|z)/(D ln 2) is bits per 8-bit pixel. Decoder outputs per pixel: mixture
    logits, locations, log scales (softly ≥ `min_log_scale`). The locations are the outputs
    themselves, whatever the model's link, as in PixelCNN++: a location held inside (0, 1) by a
    sigmoid could not pass beyond an edge bin's only finite edge, which with the floor capped a
    black or white pixel's probability at 0.8957."""

    name = "discretized_logistic"
    support = "8bit"
    component: ClassVar[type[Distribution]] = BinnedLogistic  # one logistic, per pixel

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "discretized_logistic"
        components: int = 5
        min_log_scale: float | None = SCALE_FLOOR

        def check(self, key: str) -> None:
            require_at_least(f"{key}.components", self.components, 1)
            require_floor(f"{key}.min_log_scale", self.min_log_scale)

    def __init__(self, cfg: Config, dim: int, link: str = "sigmoid"):
        super().__init__(cfg, dim, link)
        k = cfg.components
        self.params_per_pixel = 3 * k if k > 1 else 2

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        k, d = self.cfg.components, self.dim
        parts = out.unflatten(-1, (-1, k, d))  # [..., 3 (logits, loc, log scale), K, D]
        loc, log_scale = parts[..., -2, :, :], parts[..., -1, :, :]
        scale = soft_floor(log_scale, self.cfg.min_log_scale).clamp(max=MAX_LOG_SCALE).exp()
        if k == 1:
            return pixels(self.component(loc[..., 0, :], scale[..., 0, :]))
        return pixels(PixelMixture(parts[..., 0, :, :], self.component(loc, scale)))

    def mean(self, out: Tensor, dist: Distribution | None = None) -> Tensor:
        return (dist if dist is not None else self(out, out)).mean


class Logistic(DiscretizedLogistic):
    """The discretized logistic's density twin: a mixture of `components` logistics per pixel
    with the same decoder outputs (mixture logits, unconstrained locations, log scales softly
    ≥ `min_log_scale`), as a density on [0, 1]'s dequantised values rather than a mass on the
    256 grey levels. The two measure the same family the two ways bits/dim can be had."""

    name = "logistic"
    support = "real"
    component = LogisticDist

    @dataclass
    class Config(DiscretizedLogistic.Config):
        name: str = "logistic"


class DiscretizedGaussian(Likelihood):
    """N(f(z), σ²) per pixel, integrated over the same 256 bins as the discretized logistic,
    with a σ per pixel from the decoder (log σ softly ≥ `min_log_sigma`); the locations are the
    outputs themselves, as the discretized logistic's."""

    name = "discretized_gaussian"
    support = "8bit"
    params_per_pixel = 2

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "discretized_gaussian"
        init_sigma: float = 1.0
        min_log_sigma: float | None = SCALE_FLOOR

        def check(self, key: str) -> None:
            require_positive(f"{key}.init_sigma", self.init_sigma)
            require_floor(f"{key}.min_log_sigma", self.min_log_sigma)

    def forward(self, out: Tensor, x: Tensor) -> Distribution:
        raw = out[..., self.dim: 2 * self.dim] + math.log(self.cfg.init_sigma)
        sigma = soft_floor(raw, self.cfg.min_log_sigma).clamp(max=MAX_LOG_SCALE).exp()
        return pixels(BinnedNormal(out[..., : self.dim], sigma))

    def mean(self, out: Tensor, dist: Distribution | None = None) -> Tensor:
        return (dist if dist is not None else self(out, out)).mean
