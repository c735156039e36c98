"""The pictures people look at first, as image grids: test images above their
reconstructions, samples from the prior, latent traversals, and the KL per latent dimension.

`make_grid` is torchvision's layout in a few lines: importing torchvision.utils loads its model
zoo and torch._dynamo, a second of start-up for every run.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from vaerun.atomic import write_atomic
from vaerun.model import VAE
from vaerun.objective import seeded


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> Tensor:
    """[N, C, H, W] images in [0, 1] tiled `nrow` to a row with `padding` pixels between and
    around them (torchvision.utils.make_grid's layout): a [3, H', W'] image."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding),
                           pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = r * (h + padding) + padding, col * (w + padding) + padding
        grid[:, top: top + h, left: left + w] = images[i]
    return grid


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
    # here, not at the top: only runs that draw pay for it; Figure, not pyplot: no GUI machinery
    import matplotlib.ticker
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(range(len(kl_dims)), kl_dims.cpu().numpy(), color="tab:blue")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return torch.from_numpy(rgba).permute(2, 0, 1).float() / 255


def save_png(grid: Tensor, path: Path) -> None:
    """Write a [3, H, W] image in [0, 1] as a PNG, atomically."""
    from PIL import Image  # matplotlib's own dependency

    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu()
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="png")
    write_atomic(path, lambda f: f.write(buf.getvalue()))


def all_pictures(vae: VAE, x: Tensor, kl_dims: Tensor, n_traverse: int = 5) -> dict[str, Tensor]:
    """Every picture for a model and a few test images x, keyed by name."""
    top = torch.argsort(kl_dims, descending=True)[:n_traverse].tolist()
    with vae.evaluating():
        return {
            "reconstructions": reconstructions(vae, x[:8]),
            "samples": samples(vae),
            "traversals": traversals(vae, x, top),
            "kl_per_dim": kl_bar_chart(kl_dims),
        }
