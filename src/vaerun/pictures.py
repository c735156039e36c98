"""The pictures people look at first, as torchvision image grids: test images above their
reconstructions, samples from the prior, latent traversals, and the KL per latent dimension."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vaerun.atomic import write_atomic
from vaerun.model import VAE
from vaerun.objective import seeded


def _images(vae: VAE, x: Tensor) -> Tensor:
    return x.reshape(-1, *vae.image_shape).clamp(0, 1)


@torch.no_grad()
def reconstructions(vae: VAE, x: Tensor) -> Tensor:
    """Row 1: the images; row 2: decoder means f(z) at the posterior means z = E_q[z|x]."""
    recon = vae.likelihood.mean(vae.decode(vae.posterior(x).mean))
    return make_grid(_images(vae, torch.cat([x, recon])), nrow=len(x), pad_value=1)


@torch.no_grad()
def samples(vae: VAE, n: int = 64, seed: int = 0) -> Tensor:
    """Decoder means of z ~ p(z) (the same z every call, so epochs compare)."""
    with seeded(seed, vae.prior_loc.device):
        z = vae.prior().sample((n,))
    return make_grid(_images(vae, vae.likelihood.mean(vae.decode(z))), nrow=8, pad_value=1)


@torch.no_grad()
def traversals(vae: VAE, x: Tensor, dims: list[int], steps: int = 9, span: float = 3.0) -> Tensor:
    """One row per latent dim: z = E_q[z|x] with that coordinate swept over [-span, span]."""
    z0 = vae.posterior(x[:1]).mean[0]
    values = torch.linspace(-span, span, steps, device=z0.device)
    z = z0.repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    means = vae.likelihood.mean(vae.decode(z.reshape(-1, z0.numel())))
    return make_grid(_images(vae, means), nrow=steps, pad_value=1)


def kl_bar_chart(kl_dims: Tensor) -> Tensor:
    """A bar chart of the mean KL of each latent dimension, as a [3, H, W] image in [0, 1]."""
    import matplotlib  # here, not at the top: only runs that draw pay for its import
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=80)
    ax.bar(range(len(kl_dims)), kl_dims.cpu().numpy(), color="tab:blue")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(rgba).permute(2, 0, 1).float() / 255


def save_png(grid: Tensor, path: Path) -> None:
    """Write an image grid as a PNG, atomically."""
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    write_atomic(path, lambda f: f.write(buf.getvalue()))


def all_pictures(vae: VAE, x: Tensor, kl_dims: Tensor, n_traverse: int = 5) -> dict[str, Tensor]:
    """Every picture for a model and a few test images x, keyed by name."""
    was_training = vae.training
    vae.eval()
    try:
        top = torch.argsort(kl_dims, descending=True)[:n_traverse].tolist()
        return {
            "reconstructions": reconstructions(vae, x[:8]),
            "samples": samples(vae),
            "traversals": traversals(vae, x, top),
            "kl_per_dim": kl_bar_chart(kl_dims),
        }
    finally:
        vae.train(was_training)
