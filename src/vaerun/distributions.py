"""Distributions torch.distributions lacks, or gets wrong at extreme parameters, in its idiom.

- `StableContinuousBernoulli`: torch's ContinuousBernoulli with its normaliser and mean taken
  from the logits. torch clamps probs to [eps, 1 − eps], so past |logit| ≈ 16 its log C is stuck
  at 2.77 (the true value grows as log|L|) and its mean at 0.0627.
- `BinnedLogistic`, `BinnedNormal`: a logistic or normal variable Y observed as the 8-bit grey
  level x = k/255 of the bin it falls in, bins of width 1/255 centred on k/255, the edge bins
  reaching to ±∞ (PixelCNN++, Salimans et al. 2017). log_prob is the log mass of x's bin,
  computed in log space.
- `Logistic`: torch's logistic (a transformed Uniform), with the mean it lacks.
- `PixelMixture`: torch's MixtureSameFamily with the components on the second-to-last axis
  ([..., K, D]) instead of the last, the layout the decoder's outputs have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    AffineTransform,
    ContinuousBernoulli,
    Distribution,
    Normal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
    constraints,
)

LEVELS = 256  # grey levels k = 0..255, x = k/255
WIDTH = 1 / (LEVELS - 1)  # a bin's width
SMALL_LOGIT = 0.1  # below it, the continuous Bernoulli's closed forms use their series


def log1mexp(d: Tensor) -> Tensor:
    """log(1 − e^{−d}) for d > 0, accurate for small and large d (Mächler 2012)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


class StableContinuousBernoulli(ContinuousBernoulli):
    """ContinuousBernoulli(logits=L) with log C(L) = log|L| − log tanh(|L|/2) and mean
    1/(1 − e^{−L}) − 1/L computed from L, with their Taylor series near L = 0."""

    def _cont_bern_log_norm(self) -> Tensor:
        a = self.logits.abs()
        small = a < SMALL_LOGIT
        safe = torch.where(small, torch.ones_like(a), a)  # no log 0 in the unused branch
        # log tanh(a/2) = log(1 − e^{−a}) − log(1 + e^{−a})
        exact = safe.log() - log1mexp(safe) + torch.log1p(torch.exp(-safe))
        series = math.log(2) + a.square() / 12 - 7 * a.pow(4) / 1440
        return torch.where(small, series, exact)

    @property
    def mean(self) -> Tensor:
        L = self.logits
        small = L.abs() < SMALL_LOGIT
        safe = torch.where(small, torch.ones_like(L), L)
        exact = -1 / torch.expm1(-safe) - 1 / safe
        series = 0.5 + L / 12 - L.pow(3) / 720 + L.pow(5) / 30240
        return torch.where(small, series, exact)


class Logistic(TransformedDistribution):
    """The logistic distribution, as torch builds it (Uniform(0, 1) through the logit and an
    affine map: log p(y) = −t − log s − 2·softplus(−t), t = (y − μ)/s), with its mean μ."""

    def __init__(self, loc: Tensor, scale: Tensor):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        base = Uniform(torch.zeros_like(self.loc), torch.ones_like(self.loc), validate_args=False)
        super().__init__(base, [SigmoidTransform().inv, AffineTransform(self.loc, self.scale)],
                         validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc


class Binned(Distribution):
    """A location-scale variable Y seen through the 256 bins of [0, 1] (edge bins to ±∞).
    Subclasses give the log mass between two standardised edges and the mean."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc: Tensor, scale: Tensor):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=False)

    def edges(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Standardised lower and upper edges of x's bin, and masks of the two edge bins. Both
        edges come from one formula, so a bin's upper edge is its neighbour's lower edge to the
        bit, and the 256 masses telescope to 1 however narrow the scale."""
        k = torch.round(x * (LEVELS - 1)).clamp(0, LEVELS - 1)

        def edge(j: Tensor) -> Tensor:
            return ((j - 0.5) / (LEVELS - 1) - self.loc) / self.scale

        return edge(k), edge(k + 1), k == 0, k == LEVELS - 1

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        y = self.continuous().sample(sample_shape)
        return torch.round(y.clamp(0, 1) * (LEVELS - 1)) / (LEVELS - 1)

    def continuous(self) -> Distribution:
        raise NotImplementedError


class BinnedLogistic(Binned):
    """log P(bin) = log(σ(hi) − σ(lo)) = log σ(hi) + log σ(−lo) + log(1 − e^{−(hi − lo)}): no
    difference of two probabilities is ever taken, so it holds in log space for narrow and wide
    bins and far tails alike; the edge bins keep only their one finite edge's term."""

    def continuous(self) -> Distribution:
        return Logistic(self.loc, self.scale)

    def log_prob(self, x: Tensor) -> Tensor:
        lo, hi, first, last = self.edges(x)
        log_cdf_hi = -F.softplus(-hi)  # log σ(hi): all of it in the first bin
        log_sf_lo = -F.softplus(lo)  # log σ(−lo) = log(1 − σ(lo)): all of it in the last
        # log(1 − e^{−d}) by its one branch that is exact for the small d of narrow bins; for
        # d > 16 it rounds to 0 where the truth is above −1e-7
        width = torch.log(-torch.expm1(-(hi - lo).clamp_min(1e-30)))
        return (torch.where(last, 0.0, log_cdf_hi) + torch.where(first, 0.0, log_sf_lo)
                + torch.where(first | last, 0.0, width))

    @property
    def mean(self) -> Tensor:
        """E[clamp(Y, 0, 1)] = ∫₀¹ P(Y > t) dt = s·(softplus(μ/s) − softplus((μ − 1)/s)), within
        half a grey level of the binned mean."""
        s = self.scale
        return s * (F.softplus(self.loc / s) - F.softplus((self.loc - 1) / s))


class BinnedNormal(Binned):
    """log P(bin) = log(Φ(hi) − Φ(lo)) from torch.special.log_ndtr on the side of the mean where
    both edges lie in the lower tail (no cancellation there); where the bin is so narrow that
    the two log Φ differ by less than 1e-3, the density times the width (PixelCNN++'s
    fallback), whose relative error is below 1e-7 there."""

    def continuous(self) -> Distribution:
        return Normal(self.loc, self.scale, validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        lo, hi, first, last = self.edges(x)
        upper = (lo + hi) > 0  # the bin lies above the mean: use the mirror image
        a, b = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)  # a < b, mostly ≤ 0
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        gap = (log_b - log_a).clamp_min(1e-30)
        inner = log_b + log1mexp(gap)
        narrow = Normal(self.loc, self.scale, validate_args=False).log_prob(x) + math.log(WIDTH)
        inner = torch.where(gap < 1e-3, narrow, inner)
        return torch.where(first, torch.special.log_ndtr(hi),
                           torch.where(last, torch.special.log_ndtr(-lo), inner))

    @property
    def mean(self) -> Tensor:
        """E[clamp(Y, 0, 1)] = 1 − s·(G((1 − μ)/s) − G(−μ/s)), G(t) = t·Φ(t) + φ(t)."""
        s, mu = self.scale, self.loc

        def g(t: Tensor) -> Tensor:
            return t * torch.special.ndtr(t) + torch.exp(-t.square() / 2) / math.sqrt(2 * math.pi)

        return 1 - s * (g((1 - mu) / s) - g(-mu / s))


class PixelMixture(Distribution):
    """p(x_i) = Σ_k π_ik p_k(x_i): a mixture per pixel, as MixtureSameFamily(Categorical(logits),
    components) computes it, with the K components on axis −2 of `logits` and of the
    components' batch shape [..., K, D]."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, logits: Tensor, components: Distribution):
        self.logits, self.components = logits, components
        shape = components.batch_shape
        super().__init__(shape[:-2] + shape[-1:], validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        log_pi = torch.log_softmax(self.logits, -2)
        return torch.logsumexp(log_pi + self.components.log_prob(x.unsqueeze(-2)), -2)

    @property
    def mean(self) -> Tensor:
        return (torch.softmax(self.logits, -2) * self.components.mean).sum(-2)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        k = torch.distributions.Categorical(logits=self.logits.movedim(-2, -1)).sample(sample_shape)
        draws = self.components.sample(sample_shape)
        return draws.gather(-2, k.unsqueeze(-2)).squeeze(-2)
