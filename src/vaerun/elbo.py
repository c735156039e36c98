"""The ELBO and its parts, per image, in nats, and the loss as written:

    elbo = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))     (one reparameterised z per image)
    loss = a_rec·Σ_i R_i + a_kl·Σ_i KL_i            (over a batch's images i: what is minimised)

R_i is the image's −log p(x|z) (loss.recon=nll) or its squared error Σ_d (x_d − f(z)_d)²
(loss.recon=sse); `Objective` takes a_rec and a_kl from the loss's reductions and weights. The
loss is, up to a constant, the negative ELBO of an implied model: for the squared error, the
Gaussian N(f(z), σ²I) with σ² = a_kl/(2·a_rec) at β = 1; for a likelihood's own −log p, that
likelihood at β = a_kl/a_rec. The overall factor does not matter to Adam, but it is the learning
rate's scale for SGD.

plus diagnostics that make runs with different likelihoods comparable: the per-pixel `mse` and
the per-image `bce` of the decoder mean f(z) at the same z.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vaerun.config import FLOAT32_MAX, FLOAT32_TINY, LossConfig, Over, Recon, require
from vaerun.data import to_float
from vaerun.model import VAE


class Objective:
    """A loss as written (`LossConfig`, with β the KL weight) for images of D pixels and d
    latents: per-image losses whose mean over a batch of B is the batch's loss exactly."""

    def __init__(self, cfg: LossConfig, beta: float, pixels: int, latents: int):
        self.cfg, self.beta, self.pixels, self.latents = cfg, beta, pixels, latents

    def weights(self, batch: int) -> tuple[float, float]:
        """(a_rec, a_kl) of loss = a_rec·Σ_i R_i + a_kl·Σ_i KL_i over a batch of `batch`."""
        c = self.cfg
        a_rec = c.recon_weight / (self.pixels if c.recon_over_pixels == Over.mean else 1)
        a_kl = self.beta / (self.latents if c.kl_over_latents == Over.mean else 1)
        return (a_rec / (batch if c.recon_over_batch == Over.mean else 1),
                a_kl / (batch if c.kl_over_batch == Over.mean else 1))

    def scale(self) -> str:
        """How the loss as written is reduced (its numbers are not nats per image)."""
        c = self.cfg
        return (f"{c.recon_over_batch.value} over images of {c.recon_over_pixels.value} over "
                f"pixels, {c.kl_over_batch.value} over images of {c.kl_over_latents.value} over "
                "latents")

    def implied(self, batch: int) -> dict[str, float]:
        """The model the loss is: `implied_sigma` (sse: the Gaussian's σ at β = 1) or
        `implied_beta` (nll: the KL weight against the likelihood's own −log p)."""
        a_rec, a_kl = self.weights(batch)
        if self.cfg.recon == Recon.sse:
            return {"implied_sigma": math.sqrt(a_kl / (2 * a_rec))}
        return {"implied_beta": a_kl / a_rec}

    def check(self, batch: int) -> None:
        """The loss within float32: the σ² a squared-error loss implies at least float32's
        smallest normal number (β = 0 implies σ = 0), and no term's weight so large that its sum
        over pixels or latents, a few nats each, overflows."""
        a_rec, a_kl = self.weights(batch)
        keys = f"beta={self.beta:g} with loss.recon_weight={self.cfg.recon_weight:g}"
        if self.cfg.recon == Recon.sse:
            var = a_kl / (2 * a_rec)
            require(var >= FLOAT32_TINY, "beta", self.beta, f"{keys} and the squared error "
                    f"implies sigma^2 = {var:.3g}, below float32's smallest normal number "
                    f"({FLOAT32_TINY:.3g}): raise beta, or use loss.recon=nll")
        for key, weight in (("loss.recon_weight", batch * a_rec * self.pixels),
                            ("beta", batch * a_kl * self.latents)):
            require(weight <= FLOAT32_MAX / 1e6, key, self.cfg.recon_weight if key[0] == "l"
                    else self.beta, f"{keys} weighs a term {weight:.3g} times a nat per image: "
                    "its loss would overflow float32; use a smaller weight")

    def per_image(self, recon: Tensor, kl: Tensor, batch: int) -> Tensor:
        """B·(a_rec·R_i + a_kl·KL_i): their mean over the B images is the loss."""
        a_rec, a_kl = self.weights(batch)
        return (batch * a_rec) * recon + (batch * a_kl) * kl

    def describe(self, batch: int, likelihood: str, shape: tuple[int, ...] = ()) -> str:
        """One line: the loss as written and the model it is (`likelihood`: its name; `shape`:
        the images', C×H×W)."""
        c = self.cfg
        rec = {Recon.sse: "squared error", Recon.nll: "-log p(x|z)"}[c.recon]
        r = f"{c.recon_over_batch.value} over images of ({c.recon_over_pixels.value} over pixels of {rec})"
        k = f"{c.kl_over_batch.value} over images of ({c.kl_over_latents.value} over latents of KL)"
        w = "" if c.recon_weight == 1 else f"{c.recon_weight:g}·"
        line = f"{w}{r} + {self.beta:g}·{k}"
        if c.written:  # a copied line, with the weights it runs at (a user's overrides too)
            line = f"{c.written}, run with beta = {self.beta:g}" + (
                f" and loss.recon_weight = {c.recon_weight:g}" if c.recon_weight != 1 else "")
        what = self.implied(batch)
        model = (f"the Gaussian VAE with sigma = {what['implied_sigma']:.4g} at beta = 1"
                 if "implied_sigma" in what else
                 f"the {likelihood} VAE at beta = {what['implied_beta']:.4g}")
        name = f" ({c.name})" if c.name not in ("elbo", "") else ""
        images = (f"{'x'.join(map(str, shape))} images (D = {self.pixels} values)"
                  if shape and shape[0] > 1 else f"{self.pixels}-pixel images")
        return (f"loss{name}: {line} is {model} on these {images}"
                + (f" at a batch of {batch}" if self.batch_dependent else ""))

    @property
    def batch_dependent(self) -> bool:
        """The implied model changes with the batch size (the two terms reduce differently)."""
        return self.cfg.recon_over_batch != self.cfg.kl_over_batch


def elbo_terms(vae: VAE, x: Tensor, objective: Objective, bce: bool = True,
               pixel_sse: Tensor | None = None, batch: int | Tensor | None = None,
               mask: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image terms for the batch x; `loss` carries the gradient, the rest are detached.
    `batch`: the B of the loss's reductions (default: the images in x; a tensor where the batch
    is padded to one shape); `mask`: which rows are images (1) and which padding (0), for what
    the likelihood fits to the batch. `bce`: also the BCE of the decoder mean (a diagnostic the
    training loop reads on its logging steps only). `pixel_sse`, if given, gets each pixel's
    squared error summed over the batch added to it."""
    q = vae.posterior(x)
    out = vae.decode(q.rsample())
    lik = vae.likelihood
    p_x = lik(out, x, mask) if lik.batch_statistics else lik(out, x)
    log_px_z, kl, mean = p_x.log_prob(x), vae.kl(q), lik.mean(out, p_x)
    recon = (x - mean).square().sum(-1) if objective.cfg.recon == Recon.sse else -log_px_z
    loss = objective.per_image(recon, kl, len(x) if batch is None else batch)
    with torch.no_grad():
        mean = mean.detach()
        squared = (mean - x).square()
        if pixel_sse is not None:
            pixel_sse += squared.sum(0)
        terms = {"loss": loss, "elbo": log_px_z - kl, "log_px_z": log_px_z, "kl": kl,
                 "mse": squared.mean(-1), **lik.terms(out, x, p_x)}
        if bce:  # torch's BCE raises on a NaN mean (on CUDA: a device assert); here the
            m = mean.clamp(0, 1)  # image's BCE is a NaN instead, for the non-finite check to name
            bce = F.binary_cross_entropy(m.nan_to_num(0.5), x.clamp(0, 1), reduction="none")
            terms["bce"] = torch.where(m.isnan().any(-1), torch.nan, bce.sum(-1))
    return {k: v if k == "loss" else v.detach() for k, v in terms.items()}


def step_bytes(vae: VAE, objective: Objective, batch: int) -> int:
    """The bytes a training step on `batch` images keeps for its backward pass (the tensors
    autograd saves), measured on a model built on the meta device: nothing is allocated."""
    saved = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    d = vae.likelihood.dim
    try:
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            elbo_terms(vae, torch.rand(batch, d), objective, bce=False)["loss"].mean()
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: its outputs then
        return 16 * batch * (d + sum(p.shape[0] for p in vae.parameters() if p.dim() == 2))
    return saved


class Meter:
    """Sums per-image terms on their device (no host sync per step); `means()` syncs once.
    A step adds its terms' sums over the images of its batch (`mask`: its padding left out)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, ...], Tensor] = {}  # keyed by the set of terms of a step
        self.counts: dict[tuple[str, ...], int | Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.counts)

    def state(self) -> dict:
        """Plain containers and tensors (a checkpoint holds them; weights_only loads them)."""
        return {"keys": [list(k) for k in self.sums], "sums": list(self.sums.values()),
                "counts": [self.counts[k] for k in self.sums]}

    @classmethod
    def from_state(cls, state: dict | None, device: torch.device) -> Meter:
        meter = cls()
        for keys, s, n in zip(*(state or {"keys": [], "sums": [], "counts": []}).values(),
                              strict=True):
            meter.add_sums(tuple(keys), s.to(device), n.to(device) if torch.is_tensor(n) else n)
        return meter

    def add(self, terms: dict[str, Tensor], mask: Tensor | None = None) -> None:
        stacked = torch.stack([v.detach() for v in terms.values()], 1)
        if mask is None:
            self.add_sums(tuple(terms), stacked.sum(0), len(stacked))
        else:
            self.add_sums(tuple(terms), (stacked * mask[:, None]).sum(0), mask.sum())

    def add_sums(self, keys: tuple[str, ...], sums: Tensor, count: int | Tensor) -> None:
        self.sums[keys] = self.sums[keys] + sums if keys in self.sums else sums
        self.counts[keys] = self.counts[keys] + count if keys in self.counts else count

    def means(self) -> dict[str, float]:
        """Means per image; with a Gaussian likelihood also `sigma_optimal` = sqrt(mse), the σ
        that maximises the Gaussian likelihood of these reconstructions."""
        totals: dict[str, float] = {}
        counts: dict[str, float] = {}
        for keys, s in self.sums.items():
            for k, v in zip(keys, s.tolist(), strict=True):
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + float(self.counts[keys])
        out = {k: totals[k] / counts[k] for k in totals}
        if "sigma" in out:
            out["sigma_optimal"] = math.sqrt(out["mse"]) if out["mse"] >= 0 else math.nan
        return out


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run a block with its own RNG stream, leaving the training RNG untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(vae: VAE, x: Tensor, objective: Objective, batch_size: int, seed: int,
             loss_batch: int | None = None) -> dict[str, float]:
    """Mean of every term over the images x (e.g. the whole test set), with fixed noise;
    `loss_batch`: the B of the loss's reductions (the training batch size)."""
    meter = Meter()
    pixel_sse = torch.zeros(x.shape[-1], device=x.device)
    with vae.evaluating(), seeded(seed, x.device):
        for i in range(0, len(x), batch_size):
            meter.add(elbo_terms(vae, to_float(x[i: i + batch_size]), objective, True, pixel_sse,
                                 loss_batch))
    return {**meter.means(), **vae.likelihood.pixel_report(pixel_sse / len(x))}
