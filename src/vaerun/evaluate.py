"""Evaluation beyond the ELBO, in nats per image, on the test set:

    test/nll_iwae   −log p(x) ≈ −(logsumexp_k log w_k − log k),  w = p(x|z) p(z) / q(z|x)
                    (Burda et al. 2016; a tighter bound than −ELBO, exact as k → ∞)
    test/bits_per_dim   nll / (D ln 2) for binary data; (nll + D ln 256) / (D ln 2) for 8-bit
                    data dequantised to (k + u)/256 under a density; absent where it means nothing
    test/active_units   latent dims with Cov_x(E_q[z_i|x]) > 0.01
    test/kl_dim_max, test/kl_dim_min   the mean KL of the most and least used latent dims

`vaerun eval run_dir=PATH eval.iwae_k=5000` reruns it on a saved run and merges the results into
its metrics.json and TensorBoard; training runs it once at its end with eval.iwae_k (100).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import kl_divergence
from tqdm import tqdm

from vaerun.data import Dataset
from vaerun.logs import RunLog
from vaerun.model import VAE
from vaerun.objective import seeded
from vaerun.pictures import all_pictures, save_png

log = logging.getLogger("vaerun")

ACTIVE_THRESHOLD = 0.01
CHUNK_ELEMENTS = 1 << 24  # decoder outputs held at once while importance sampling (64 MiB fp32)


def log_weights(vae: VAE, x: Tensor, k: int) -> Tensor:
    """log w = log p(x|z) + log p(z) − log q(z|x) for k samples z ~ q(z|x): shape [k, B]."""
    q = vae.posterior(x)
    z = q.sample((k,))
    log_px_z = vae.likelihood(vae.decode(z), x).log_prob(x)
    return log_px_z + vae.prior().log_prob(z) - q.log_prob(z)


@torch.no_grad()
def iwae_nll(vae: VAE, x: Tensor, k: int, batch_size: int, seed: int,
             progress: bool = True, poll: Callable[[], None] | None = None) -> Tensor:
    """The k-sample importance-weighted estimate of −log p(x) per image (nats), in memory
    bounded for any k: samples are drawn in chunks and combined with logaddexp. `poll()` is
    called between chunks (it may raise to stop the evaluation)."""
    was_training = vae.training
    vae.eval()
    out_dim = vae.likelihood.params_per_pixel * vae.likelihood.dim
    chunk = max(1, CHUNK_ELEMENTS // (batch_size * out_dim))
    batches = range(0, len(x), batch_size)
    bar = tqdm(total=len(batches) * math.ceil(k / chunk), desc=f"IWAE k={k}", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    nll = []
    try:
        with seeded(seed, x.device):
            for i in batches:
                xb = x[i: i + batch_size]
                lse = torch.full((len(xb),), -math.inf, device=x.device)
                for j in range(0, k, chunk):
                    lse = torch.logaddexp(lse, log_weights(vae, xb, min(chunk, k - j)).logsumexp(0))
                    bar.update()
                    if poll is not None:
                        poll()
                nll.append(math.log(k) - lse)
    finally:
        bar.close()
        vae.train(was_training)
    return torch.cat(nll)


@torch.no_grad()
def posterior_stats(vae: VAE, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Per latent dim: Var_x(E_q[z_i|x]) (the active-unit statistic) and the mean KL."""
    means, kls = [], []
    prior = vae.prior().base_dist
    for i in range(0, len(x), batch_size):
        q = vae.posterior(x[i: i + batch_size]).base_dist
        means.append(q.loc)
        kls.append(kl_divergence(q, prior))
    return torch.cat(means).var(0), torch.cat(kls).mean(0)


def final_metrics(vae: VAE, data: Dataset, cfg: Any, variances: Tensor, kl_dims: Tensor,
                  progress: bool = True, poll: Callable[[], None] | None = None
                  ) -> dict[str, float]:
    """Every metric of the module docstring, for the test set (given its posterior_stats)."""
    e = cfg.eval
    out: dict[str, float] = {
        "active_units": float((variances > ACTIVE_THRESHOLD).sum()),
        "kl_dim_max": kl_dims.max().item(),
        "kl_dim_min": kl_dims.min().item(),
    }
    if e.iwae_k > 0:
        nll = iwae_nll(vae, data.test, e.iwae_k, e.batch_size, e.seed, progress,
                       poll).mean().item()
        out.update(nll_iwae=nll, iwae_k=float(e.iwae_k))
        bpd, why = vae.likelihood.bits_per_dim(nll, data.values)
        if bpd is None:
            log.info("no test/bits_per_dim: %s", why)
        else:
            out["bits_per_dim"] = bpd
    return out


def write_pictures(vae: VAE, data: Dataset, runlog: RunLog, step: int,
                   kl_dims: Tensor | None = None, n_images: int = 2000) -> None:
    """All pictures into TensorBoard (images tab) and as PNGs under the run's images/;
    traversals follow the most used latent dims (kl_dims, else measured on n_images)."""
    if kl_dims is None:
        _, kl_dims = posterior_stats(vae, data.test[:n_images], 1000)
    for name, grid in all_pictures(vae, data.test[:n_images], kl_dims).items():
        runlog.writer.add_image(f"images/{name}", grid, step)
        save_png(grid, runlog.run_dir / "images" / f"{name}.png")


def evaluate_run(vae: VAE, data: Dataset, cfg: Any, runlog: RunLog, step: int,
                 progress: bool = True, poll: Callable[[], None] | None = None
                 ) -> dict[str, float]:
    """Every metric of the module docstring, into TensorBoard and metrics.json, and the
    pictures; `poll()` is called at safe points (it may raise to stop)."""
    if poll is not None:
        poll()
    variances, kl_dims = posterior_stats(vae, data.test, cfg.eval.batch_size)
    metrics = final_metrics(vae, data, cfg, variances, kl_dims, progress, poll)
    runlog.scalars("test", metrics, step)
    runlog.update_split("test", metrics)
    write_pictures(vae, data, runlog, step, kl_dims)
    runlog.flush()
    return metrics
