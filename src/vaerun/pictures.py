"""The pictures people look at first, as image grids: test images above their
reconstructions, samples from the prior, latent traversals, and the KL per latent dimension.

`make_grid` is torchvision's layout in a few lines: importing torchvision.utils loads its model
zoo and torch._dynamo into every run.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from vaerun.elbo import seeded
from vaerun.model import VAE
from vaerun.rundir import write_atomic


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


def _zoom(vae: VAE) -> int:
    """Images smaller than MNIST's 28 pixels are drawn this many times larger (each pixel a
    square of them), so that the labels beside their rows fit them."""
    return math.ceil(28 / vae.image_shape[-2])


def _images(vae: VAE, x: Tensor) -> Tensor:
    k = _zoom(vae)
    return x.reshape(-1, *vae.image_shape).clamp(0, 1).repeat_interleave(k, -2).repeat_interleave(
        k, -1)


PAD = 2  # make_grid's padding between and around the images


def labelled(grid: Tensor, cell: int, title: str = "", rows: list[str] | tuple = (),
             cols: list[str] | tuple = ()) -> Tensor:
    """`grid` (make_grid's, cells `cell` pixels apart) with a title above it, a label left of
    each row and one above each column, drawn with Pillow: a [3, H', W'] image in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda t: probe.textbbox((0, 0), t, font=font)[2]  # noqa: E731
    img = Image.fromarray(grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
                          .permute(1, 2, 0).cpu().numpy())
    left = max((width(r) for r in rows), default=-8) + 8
    top = (16 if title else 0) + (14 if cols else 0)
    canvas = Image.new("RGB", (max(left + img.width, width(title) + 8), top + img.height + 2),
                       "white")
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for i, text in enumerate(rows):
        _text(draw, left - 4, top + PAD + i * cell + (cell - PAD) / 2, text, font, "right")
    for j, text in enumerate(cols):
        _text(draw, left + PAD + j * cell + (cell - PAD) / 2, top - 13, text, font, "top")
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).reshape(
        canvas.height, canvas.width, 3).permute(2, 0, 1).float() / 255


def _cell(vae: VAE) -> int:
    return vae.image_shape[-2] * _zoom(vae) + PAD


def draw(vae: VAE, out: Tensor) -> Tensor:
    """One draw x ~ p(x|z) for each decoder output: binary for the Bernoulli, f(z) + σ·ε for a
    Gaussian, a grey level for the discretized likelihoods (not clipped)."""
    return vae.likelihood(out, out[..., : vae.likelihood.dim]).sample()


def _clip_note(*draws: Tensor) -> str:
    outside = any(bool(((d < 0) | (d > 1)).any()) for d in draws)
    return " (draws clipped to [0, 1] for display)" if outside else ""


@torch.no_grad()
def reconstructions(vae: VAE, x: Tensor, seed: int = 0) -> Tensor:
    """Row 1: the images; row 2: decoder means f(z) at the posterior means z = E_q[z|x];
    row 3: one draw x ~ p(x|z) at the same z."""
    out = vae.decode(vae.posterior(x).mean)
    recon = vae.likelihood.mean(out)
    with seeded(seed, x.device):
        drawn = draw(vae, out)
    grid = make_grid(_images(vae, torch.cat([x, recon, drawn])), nrow=len(x), pad_value=1)
    return labelled(grid, _cell(vae), "reconstructions at z = E_q[z|x]" + _clip_note(drawn),
                    ["test image", "decoder mean", "one draw"])


@torch.no_grad()
def samples(vae: VAE, n: int = 32, seed: int = 0) -> Tensor:
    """For the same z ~ p(z) (the same every call, so epochs compare): rows of 8 decoder means
    f(z), each above a row of one draw x ~ p(x|z) each."""
    with seeded(seed, vae.prior_loc.device):
        z = vae.prior().sample((n,))
        out = vae.decode(z)
        drawn = draw(vae, out)
    means = vae.likelihood.mean(out)
    rows = torch.stack([means.unflatten(0, (-1, 8)), drawn.unflatten(0, (-1, 8))], 1)
    grid = make_grid(_images(vae, rows.reshape(-1, means.shape[-1])), nrow=8, pad_value=1)
    return labelled(grid, _cell(vae), "samples of z ~ p(z)" + _clip_note(drawn),
                    ["decoder mean", "one draw"] * (len(rows)))


@torch.no_grad()
def traversals(vae: VAE, x: Tensor, dims: list[int], steps: int = 9, span: float = 3.0,
               kl_dims: Tensor | None = None) -> Tensor:
    """One row per latent dim (labelled with its KL): z = E_q[z|x] with that coordinate swept
    over [-span, span] (the values along the top)."""
    z0 = vae.posterior(x[:1]).mean[0]
    values = torch.linspace(-span, span, steps, device=z0.device)
    z = z0.repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    means = vae.likelihood.mean(vae.decode(z.reshape(-1, z0.numel())))
    grid = make_grid(_images(vae, means), nrow=steps, pad_value=1)
    rows = [f"z{d}" + (f" (KL {kl_dims[d].item():.2f})" if kl_dims is not None else "")
            for d in dims]
    return labelled(grid, _cell(vae), "traversals: one latent swept, the rest at E_q[z|x]",
                    rows, [f"{v:g}" for v in values.tolist()])


def _nice_step(top: float, ticks: int = 4) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def kl_bar_chart(kl_dims: Tensor, size: tuple[int, int] = (480, 200)) -> Tensor:
    """A bar chart of the mean KL of each latent dimension (nats), as a [3, H, W] image in
    [0, 1], drawn with Pillow (a run never imports matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    kl = [v if math.isfinite(v) and v > 0 else 0.0 for v in kl_dims.cpu().tolist()]
    w, h = size
    left, right, top, bottom = 52, 12, 10, 42  # the plot area's margins, in pixels
    font = ImageFont.load_default(size=11)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    highest = max(max(kl, default=0.0), 1e-6)
    step = _nice_step(highest)
    y_max = step * math.ceil(highest / step)
    to_y = lambda v: h - bottom - (h - top - bottom) * v / y_max  # noqa: E731
    slot = (w - left - right) / max(len(kl), 1)
    for i, v in enumerate(kl):  # bars, and every few dims a tick label below
        x0 = left + slot * (i + 0.1)
        draw.rectangle([x0, to_y(v), x0 + slot * 0.8, h - bottom], fill=(31, 119, 180))
        if i % max(1, math.ceil(len(kl) / 10)) == 0:
            _text(draw, left + slot * (i + 0.5), h - bottom + 4, str(i), font, "top")
    for k in range(round(y_max / step) + 1):  # y ticks and labels
        y = to_y(k * step)
        draw.line([left - 4, y, left, y], fill="black")
        _text(draw, left - 6, y, f"{k * step:g}", font, "right")
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    _text(draw, (left + w - right) / 2, h - 16, "latent dimension", font, "top")
    label = Image.new("RGB", (100, 14), "white")  # the y label, turned on its side
    _text(ImageDraw.Draw(label), 50, 0, "KL (nats)", font, "top")
    img.paste(label.rotate(90, expand=True), (4, (top + h - bottom) // 2 - 50))
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(
        h, w, 3).permute(2, 0, 1).float() / 255


def _text(draw, x: float, y: float, text: str, font, where: str) -> None:
    """`text` centred on x with its top at y ("top"), or ending at x, centred on y ("right")."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    if where == "top":
        draw.text((x - (x1 - x0) / 2 - x0, y - y0), text, fill="black", font=font)
    else:
        draw.text((x - x1, y - (y0 + y1) / 2), text, fill="black", font=font)


def save_png(grid: Tensor, path: Path) -> None:
    """Write a [3, H, W] image in [0, 1] as a PNG, atomically."""
    from PIL import Image

    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu()
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="png")
    write_atomic(path, buf.getvalue())


def all_pictures(vae: VAE, x: Tensor, kl_dims: Tensor, n_traverse: int = 5) -> dict[str, Tensor]:
    """Every picture for a model and a few test images x, keyed by name."""
    top = torch.argsort(kl_dims, descending=True)[:n_traverse].tolist()
    with vae.evaluating():
        return {
            "reconstructions": reconstructions(vae, x[:8]),
            "samples": samples(vae),
            "traversals": traversals(vae, x, top, kl_dims=kl_dims),
            "kl_per_dim": kl_bar_chart(kl_dims),
        }
