"""The ELBO and its parts, per image, in nats:

    elbo = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))     (one reparameterised z per image)
    loss = −log p(x|z) + β·KL                        (what the optimiser minimises)

plus diagnostics that make runs with different likelihoods comparable: the per-pixel `mse` and
the per-image `bce` of the decoder mean f(z) at the same z.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import kl_divergence

from vaerun.model import VAE


def elbo_terms(vae: VAE, x: Tensor, beta: float, bce: bool = True,
               pixel_sse: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image terms for the batch x; `loss` carries the gradient, the rest are detached.
    `bce=False` skips the BCE diagnostic, which the training loop computes only on the steps
    it logs. `pixel_sse`, if given, gets
    each pixel's squared error summed over the batch added to it."""
    q = vae.posterior(x)
    z = q.rsample()
    out = vae.decode(z)
    lik = vae.likelihood
    p_x = lik(out, x)
    log_px_z = p_x.log_prob(x)
    kl = kl_divergence(q, vae.prior())
    loss = lik.reconstruction_loss(out, x, log_px_z) + beta * kl
    with torch.no_grad():
        mean = lik.mean(out, p_x)
        squared = (mean - x).square_()
        if pixel_sse is not None:
            pixel_sse += squared.sum(0)
        terms = {
            "loss": loss,
            "elbo": log_px_z - kl,
            "log_px_z": log_px_z,
            "kl": kl,
            "mse": squared.mean(-1),
            **lik.terms(out, x),
        }
        if bce:
            terms["bce"] = F.binary_cross_entropy(mean.clamp(0, 1), x.clamp(0, 1),
                                                  reduction="none").sum(-1)
        return terms


class Meter:
    """Sums per-image terms on their device (no host sync per step); `means()` syncs once.
    Each step costs three ops: the terms stacked to [B, K], summed over images, added."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, ...], Tensor] = {}  # keyed by the set of terms of a step
        self.counts: dict[tuple[str, ...], int] = {}

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
            meter.sums[tuple(keys)], meter.counts[tuple(keys)] = s.to(device), n
        return meter

    def add(self, terms: dict[str, Tensor]) -> None:
        keys = tuple(terms)
        s = torch.stack([v.detach() for v in terms.values()], 1).sum(0)
        self.sums[keys] = self.sums[keys] + s if keys in self.sums else s
        self.counts[keys] = self.counts.get(keys, 0) + len(terms["loss"])

    def means(self) -> dict[str, float]:
        """Means per image; with a Gaussian likelihood also `sigma_optimal` = sqrt(mse), the σ
        that maximises the Gaussian likelihood of these reconstructions."""
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for keys, s in self.sums.items():
            for k, v in zip(keys, s.tolist(), strict=True):
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + self.counts[keys]
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
def evaluate(vae: VAE, x: Tensor, beta: float, batch_size: int, seed: int) -> dict[str, float]:
    """Mean of every term over the images x (e.g. the whole test set), with fixed noise."""
    meter = Meter()
    pixel_sse = torch.zeros(x.shape[-1], device=x.device)
    with vae.evaluating(), seeded(seed, x.device):
        for i in range(0, len(x), batch_size):
            meter.add(elbo_terms(vae, x[i: i + batch_size], beta, True, pixel_sse))
    return {**meter.means(), **vae.likelihood.pixel_report(pixel_sse / len(x))}
