#!/usr/bin/env python3
"""Where the dequantised density's bits go: one trained `likelihood=logistic` run (a mixture of
logistics as a density on x = (k + u)/256), its test images measured three ways with the same
importance samples (the IWAE bound, k samples, one seed), in bits per 8-bit pixel:

  density       -log p(x) + D log 256 on the dequantised test images (the run's own bits/dim)
  own bins      -log P(k) with P(k) = F((k+1)/256) - F(k/256), the density integrated over the
                bin it dequantised k into (the same model, now a mass on the 256 levels)
  open edges    the same with the edge bins extended: P(0) = F(1/256), P(255) = 1 - F(255/256)
                (the mass the density puts below 0 and above 1 given to black and white)

    vaerun train likelihood=logistic dataset.dequantize=true trainer.epochs=2 hydra.run.dir=outputs/deq_gap
    python scripts/dequantization_gap.py outputs/deq_gap [--k 100] [--n 10000]
"""

from __future__ import annotations

import argparse
import math

import torch

from vaerun.assemble import load_config, load_run
from vaerun.elbo import seeded


def mixture_cdf(p_x, y: torch.Tensor) -> torch.Tensor:
    """F(y) of the per-pixel logistic mixture p(x|z) (y broadcast to its pixels), in float64
    so that a narrow bin's F(b) − F(a) does not cancel to 0."""
    mix = p_x.base_dist  # p(x|z) is Independent(PixelMixture) over the pixels
    comp = mix.components
    pi = torch.softmax(mix.logits.double(), -2)
    t = (y.double().unsqueeze(-2) - comp.loc.double()) / comp.scale.double()
    return (pi * torch.sigmoid(t)).sum(-2)


@torch.no_grad()
def bits(run: str, k: int, n: int | None = None, chunk: int = 25) -> dict[str, float]:
    cfg, state = load_config(run)
    data, vae = load_run(run, cfg, state)
    vae.eval()
    lik, x_all = vae.likelihood, data.test[:n]
    grey = torch.floor(x_all * 256).clamp(0, 255)  # the 8-bit value each test pixel came from
    total = {"density": 0.0, "own bins": 0.0, "open edges": 0.0}
    with seeded(0, x_all.device):
        for i in range(0, len(x_all), chunk):
            x, kk = x_all[i: i + chunk], grey[i: i + chunk]
            q = vae.posterior(x)
            z = q.sample((k,))
            p_x = lik(vae.decode(z), x)
            prior = vae.prior().log_prob(z) - q.log_prob(z)
            lo, hi = mixture_cdf(p_x, kk / 256), mixture_cdf(p_x, (kk + 1) / 256)
            edges = torch.where(kk == 0, hi, torch.where(kk == 255, 1 - lo, hi - lo))
            for name, log_px in (("density", p_x.log_prob(x)),
                                 ("own bins", (hi - lo).clamp_min(1e-38).log().sum(-1)),
                                 ("open edges", edges.clamp_min(1e-38).log().sum(-1))):
                nll = math.log(k) - torch.logsumexp(log_px + prior, 0)
                total[name] += nll.sum().item()
    d, n = data.dim, len(x_all)
    out = {name: v / n / (d * math.log(2)) for name, v in total.items()}
    out["density"] += math.log(256) / math.log(2)  # p(k) >= density * (1/256)^D
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--n", type=int, default=None, help="the first n test images (default: all)")
    a = p.parse_args()
    for name, b in bits(a.run, a.k, a.n).items():
        print(f"{name:>10}: {b:.3f} bits/dim")


if __name__ == "__main__":
    main()
