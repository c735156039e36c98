"""Distributions torch.distributions lacks, or gets wrong at extreme parameters, or computes
slowly, in its idiom.

- `softplus`: log(1 + eᵗ) as max(t, 0) − log σ(|t|), from sigmoid and log. torch's goes
  through log1p, which on this project's CPU (AVX-512) takes 6× as long as log: the
  log-probabilities of a chunk of 2²¹ outputs of a trained decoder took 11.2 ms with it and
  4.7 ms without, and it was 41% of the default run's IWAE evaluation.
- `Bernoulli`: torch's, with log p(x) = x·l − softplus(l) from the logits l, in place where
  it can be, where torch's −BCE-with-logits makes about seven passes on the CPU.
- `binary_cross_entropy`: torch's F.binary_cross_entropy (its logs floored at −100), summed
  over the last axis, from vectorised logs: torch's CPU kernel takes log and log1p per element
  in a scalar loop, 5× as long (a third of the per-epoch test evaluation).
- `BernoulliImage`: the D pixels of a Bernoulli as one event, whose log_prob without a
  gradient takes one log per 112 pixels (the IWAE of 2,000 test images: 1.66 s → 1.40 s).
- `StableContinuousBernoulli`: torch's ContinuousBernoulli with its normaliser and mean taken
  from the logits. torch clamps probs to [eps, 1 − eps], so past |logit| ≈ 16 its log C is stuck
  at 2.77 (the true value grows as log|L|) and its mean at 0.0627.
- `BinnedLogistic`, `BinnedNormal`: a logistic or normal variable Y observed as the 8-bit grey
  level x = k/255 of the bin it falls in, bins of width 1/255 centred on k/255, the edge bins
  reaching to ±∞ (PixelCNN++, Salimans et al. 2017). log_prob is the log mass of x's bin,
  computed in log space.
- `PixelMixture`: torch's MixtureSameFamily with the components on the second-to-last axis
  ([..., K, D]) instead of the last: on the CPU a softmax over a last axis of 5 costs 30× one
  over a leading axis, and this is the discretized logistic mixture's hot loop.
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
    Independent,
    Normal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
    constraints,
)

LEVELS = 256  # grey levels k = 0..255, x = k/255
WIDTH = 1 / (LEVELS - 1)  # a bin's width
SMALL_LOGIT = 0.1  # below it, the continuous Bernoulli's closed forms use their series


class Softplus(torch.autograd.Function):
    """softplus(t) = log(1 + eᵗ) = max(t, 0) − log σ(|t|), and its derivative σ(t). σ(|t|)
    lies in [½, 1], so nothing overflows or underflows; where 1 − σ(|t|) is below half a
    float's epsilon the log rounds to 0 instead of −e^{−|t|}: an absolute error below 6e-8
    (float32), as float rounding of softplus itself near 1."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        return t.clamp(min=0).sub_(t.abs().sigmoid_().log_())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return torch.sigmoid(t).mul_(grad)


def softplus(t: Tensor) -> Tensor:
    """log(1 + eᵗ), as F.softplus (beta 1, no threshold) to float rounding, without log1p."""
    return Softplus.apply(t)


def add_product(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """out + a·b, into `out` where the product's shape fits it, else a new broadcast tensor
    (x with more axes than the logits)."""
    if out.shape != torch.broadcast_shapes(out.shape, a.shape, b.shape):
        return torch.addcmul(out, a, b)
    return out.addcmul_(a, b)


class Bernoulli(torch.distributions.Bernoulli):
    """log p(x) = x·l − softplus(l) (the BCE with logits, negated), for x in {0, 1} or, as
    the PyTorch examples VAE uses it, in [0, 1]; exact to float32 rounding, about 1e-7·|l|."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        return add_product(softplus(logits).neg_(), value, logits)


def binary_cross_entropy(p: Tensor, x: Tensor) -> Tensor:
    """−Σ_d [x_d·log p_d + (1 − x_d)·log(1 − p_d)] over the last axis, each log floored at −100
    as F.binary_cross_entropy floors it, for p and x in [0, 1] (nats; no gradient kept).
    log(1 − p) is taken as the log of the rounded 1 − p, not by log1p (6× as slow here): exact
    where p ≥ ½, and off by at most one float epsilon (absolute) where p is near 0, which over
    D pixels stays below the float rounding of the sum itself."""
    with torch.no_grad():
        log_p = torch.log(p).clamp_min_(-100)
        log_q = torch.neg(p).add_(1).log_().clamp_min_(-100)
        return log_q.addcmul_(x, log_p.sub_(log_q)).sum(-1).neg_()


GROUP = 112  # pixels whose σ(|l|) ∈ [½, 1] are multiplied before one log: ≥ 2^-112, a normal float


class BernoulliImage(Independent):
    """The D pixels (the last axis) of Bernoulli(logits=l) as one event, as Independent(·, 1).
    Where no gradient is asked for (the test evaluation, the IWAE bound), log_prob takes

        log p(x) = Σ_d x_d·log σ(l_d) + (1 − x_d)·log σ(−l_d)
                 = Σ_d (x_d − ½)·l_d − ½·Σ_d |l_d| + log Π_d σ(|l_d|),

    from log σ(±l) = ±l/2 − |l|/2 + log σ(|l|): two plain sums, and the σ(|l_d|) ∈ [½, 1] of each
    GROUP pixels multiplied before one log (the product stays ≥ 2^-112, so no underflow): the
    log, the dearest step, runs on one value in 112. The product's rounding is below 112 float
    epsilons, 1e-5 nats per group in float32. Training takes the per-pixel sum
    (`Bernoulli.log_prob`), with its gradient."""

    def __init__(self, logits: Tensor):
        super().__init__(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        logits = self.base_dist.logits
        grad = torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad)
        if grad or torch.finfo(logits.dtype).tiny > 2.0 ** -GROUP:  # float16 would underflow
            return super().log_prob(value)
        out = (logits * (value - 0.5)).sum(-1)
        size = logits.abs()
        out.sub_(size.sum(-1), alpha=0.5)
        sig = size.sigmoid_()
        d = sig.shape[-1]
        n = d - d % GROUP
        out.add_(sig[..., :n].view(*sig.shape[:-1], -1, GROUP).prod(-1).log_().sum(-1))
        if n < d:
            out.add_(sig[..., n:].prod(-1).log_())
        return out


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


def logistic(loc: Tensor, scale: Tensor) -> TransformedDistribution:
    """The logistic distribution, as torch builds it: a transformed Uniform(0, 1)."""
    base = Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False)
    return TransformedDistribution(base, [SigmoidTransform().inv, AffineTransform(loc, scale)],
                                   validate_args=False)


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
        return logistic(self.loc, self.scale)

    def log_prob(self, x: Tensor) -> Tensor:
        lo, hi, first, last = self.edges(x)
        log_cdf_hi = -softplus(-hi)  # log σ(hi): all of it in the first bin
        log_sf_lo = -softplus(lo)  # log σ(−lo) = log(1 − σ(lo)): all of it in the last
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
