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


def elbo_terms(vae: VAE, x: Tensor, beta: float) -> dict[str, Tensor]:
    """Per-image terms for the batch x; `loss` carries the gradient, the rest are detached."""
    q = vae.posterior(x)
    z = q.rsample()
    out = vae.decode(z)
    lik = vae.likelihood
    log_px_z = lik(out, x).log_prob(x)
    kl = kl_divergence(q, vae.prior())
    loss = lik.reconstruction_loss(out, x, log_px_z) + beta * kl
    with torch.no_grad():
        mean = lik.mean(out)
        return {
            "loss": loss,
            "elbo": log_px_z - kl,
            "log_px_z": log_px_z,
            "kl": kl,
            "mse": (mean - x).square().mean(-1),
            "bce": F.binary_cross_entropy(mean, x, reduction="none").sum(-1),
            **lik.terms(out, x),
        }


class Meter:
    """Sums per-image terms on their device (no host sync per step); `means()` syncs once."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for k, v in terms.items():
            s = v.detach().sum()
            self.sums[k] = self.sums[k] + s if k in self.sums else s
        self.count += len(terms["loss"])

    def means(self) -> dict[str, float]:
        """Means per image; with a Gaussian likelihood also `sigma_optimal` = sqrt(mse), the σ
        that maximises the Gaussian likelihood of these reconstructions."""
        if not self.count:
            return {}
        keys = list(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.count).tolist()
        out = dict(zip(keys, values, strict=True))
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
    was_training = vae.training
    vae.eval()
    meter = Meter()
    try:
        with seeded(seed, x.device):
            for i in range(0, len(x), batch_size):
                meter.add(elbo_terms(vae, x[i: i + batch_size], beta))
    finally:
        vae.train(was_training)
    return meter.means()
