"""The VAE: encoder q(z|x) = N(μ(x), diag σ²(x)), prior p(z) = N(0, I), and a decoder whose
output parameterises the likelihood p(x|z) (see likelihoods.py).

Each model declares its output `link`, how the decoder's location outputs become the mean f(z):
`sigmoid` (in (0, 1), like the pixels; mlp and conv) or `identity` (f(z) = Wz + b for the linear
VAE, which with a Gaussian decoder is probabilistic PCA).

A new architecture is one `Model` subclass (a `name`, a `Config`, `build`) plus one yaml file.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaerun.config import Registered, require, require_at_least
from vaerun.likelihoods import Likelihood


class Link(str, enum.Enum):
    sigmoid = "sigmoid"  # f(z) = sigmoid(decoder output): means in (0, 1), like the pixels
    identity = "identity"  # f(z) = the decoder output, unconstrained


class Activation(str, enum.Enum):
    """The hidden layers' nonlinearity (torch.nn's class of that name)."""

    relu = "relu"
    tanh = "tanh"
    elu = "elu"
    gelu = "gelu"
    silu = "silu"
    softplus = "softplus"
    leaky_relu = "leaky_relu"


ACTIVATIONS = {Activation.relu: nn.ReLU, Activation.tanh: nn.Tanh, Activation.elu: nn.ELU,
               Activation.gelu: nn.GELU, Activation.silu: nn.SiLU, Activation.softplus: nn.Softplus,
               Activation.leaky_relu: nn.LeakyReLU}


class Init(str, enum.Enum):
    torch = "torch"  # torch.nn's own defaults (Kaiming-uniform weights, uniform biases)
    glorot = "glorot"  # Glorot & Bengio (2010) uniform weights, zero biases (the IWAE paper's)


@dataclass
class ModelConfig:
    name: str = "mlp"
    latent_dim: int = 20
    link: Link = Link.sigmoid
    activation: Activation = Activation.relu
    init: Init = Init.torch
    # the decoder's output bias set so that f(0) is the training pixels' mean (through the
    # link: logit(mean) for sigmoid, clipped to [0.001, 0.999] as the IWAE code does)
    bias_from_data: bool = False

    def check(self, key: str) -> None:
        require_at_least(f"{key}.latent_dim", self.latent_dim, 1)


def widths(key: str, hidden: Any) -> list[int]:
    """`model.hidden` as a list of layer widths: one int (one layer) or a list of them."""
    layers = [hidden] if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
    ok = isinstance(layers, (list, tuple)) and len(layers) > 0 and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in layers)
    require(ok, key, hidden, "must be a width >= 1, or a list of them, e.g. [200,200]")
    return list(layers)


def chain(sizes: list[int], act: type[nn.Module]) -> list[nn.Module]:
    """Linear layers through `sizes`, each but the last followed by `act`."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers += [nn.Linear(n_in, n_out)] + ([act()] if i < len(sizes) - 2 else [])
    return layers


class Model(Registered):
    """Builds the encoder (x -> 2·latent_dim numbers) and decoder (z -> decoder output)."""

    registry: ClassVar[dict[str, type]] = {}
    group = "model"
    Config = ModelConfig
    affine: ClassVar[bool] = False  # the decoder is one affine map (its weight is W, bias b)

    @staticmethod
    def build(cfg: ModelConfig, image_shape: tuple[int, ...], out_per_pixel: int
              ) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError


class MLP(Model):
    """Fully connected layers each way: by default the VAE paper's MNIST model (and the PyTorch
    examples VAE), one hidden ReLU layer of 400; `hidden: [200, 200]` and `activation: tanh` is
    the IWAE paper's. The decoder mirrors the encoder's widths."""

    name = "mlp"

    @dataclass
    class Config(ModelConfig):
        name: str = "mlp"
        hidden: Any = 400  # one width, or a list of widths: [200, 200]

        def check(self, key: str) -> None:
            super().check(key)
            widths(f"{key}.hidden", self.hidden)

    @staticmethod
    def hparams(cfg: Config) -> dict[str, Any]:
        out = Registered.hparams(cfg)
        out["hidden"] = ",".join(map(str, widths("model.hidden", cfg.hidden)))
        return out

    @staticmethod
    def build(cfg: Config, image_shape: tuple[int, ...], out_per_pixel: int):
        d, w = math.prod(image_shape), widths("model.hidden", cfg.hidden)
        act = ACTIVATIONS[cfg.activation]
        encoder = nn.Sequential(*chain([d, *w, 2 * cfg.latent_dim], act))
        decoder = nn.Sequential(*chain([cfg.latent_dim, *w[::-1], out_per_pixel * d], act))
        return encoder, decoder


class Conv(Model):
    """A small convolutional VAE: two stride-2 convolutions down, two transposed ones up."""

    name = "conv"

    @dataclass
    class Config(ModelConfig):
        name: str = "conv"
        channels: int = 32
        hidden: int = 256

        def check(self, key: str) -> None:
            super().check(key)
            require_at_least(f"{key}.channels", self.channels, 1)
            require_at_least(f"{key}.hidden", self.hidden, 1)
            require(not self.bias_from_data, f"{key}.bias_from_data", True, "the conv decoder's "
                    "last layer has one bias per channel, not per pixel: use model=mlp or linear")

    @staticmethod
    def build(cfg: Config, image_shape: tuple[int, ...], out_per_pixel: int):
        c, h, w = image_shape
        ch, hid, act = cfg.channels, cfg.hidden, ACTIVATIONS[cfg.activation]
        h4, w4 = (h + 3) // 4, (w + 3) // 4
        encoder = nn.Sequential(
            nn.Unflatten(1, image_shape),
            nn.Conv2d(c, ch, 4, 2, 1), act(),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), act(),
            nn.Flatten(), nn.Linear(2 * ch * (h // 4) * (w // 4), hid), act(),
            nn.Linear(hid, 2 * cfg.latent_dim),
        )
        decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, hid), act(),
            nn.Linear(hid, 2 * ch * h4 * w4), act(),
            nn.Unflatten(1, (2 * ch, h4, w4)),
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), act(),
            nn.ConvTranspose2d(ch, c * out_per_pixel, 4, 2, 1),
            nn.Flatten(),
        )
        return encoder, decoder


class Linear(Model):
    """The linear VAE (Lucas et al. 2019): one affine map x -> (μ, log σ²), and f(z) = Wz + b
    with the identity link. With p(x|z) = N(Wz + b, σ²I) its marginal is N(b, WWᵀ + σ²I)
    (probabilistic PCA), so its exact log-likelihood is known (test/nll_exact)."""

    name = "linear"
    affine = True

    @dataclass
    class Config(ModelConfig):
        name: str = "linear"
        link: Link = Link.identity

    @staticmethod
    def build(cfg: Config, image_shape: tuple[int, ...], out_per_pixel: int):
        d = math.prod(image_shape)
        return nn.Linear(d, 2 * cfg.latent_dim), nn.Linear(cfg.latent_dim, out_per_pixel * d)


class VAE(nn.Module):
    """q(z|x), p(z) and p(x|z) together; every distribution is a `torch.distributions` one."""

    def __init__(self, cfg: ModelConfig, likelihood: Likelihood, image_shape: tuple[int, ...]):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.image_shape = tuple(image_shape)
        model = Model.lookup(cfg.name)
        self.encoder, self.decoder = model.build(cfg, self.image_shape, likelihood.params_per_pixel)
        self.linear_mean = model.affine and cfg.link == Link.identity  # f(z) = Wz + b
        self.likelihood = likelihood
        if cfg.init == Init.glorot:
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self.register_buffer("prior_loc", torch.zeros(cfg.latent_dim))
        self.register_buffer("prior_scale", torch.ones(cfg.latent_dim))

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x) = N(μ, diag σ²), σ = exp(½ · log σ²)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1,
                           validate_args=False)

    def kl(self, q: Distribution) -> Tensor:
        """KL(q(z|x) ‖ p(z)) per image, summed over latents, in closed form (what
        torch.distributions' KL of two diagonal Normals computes, without its dispatch, which
        no captured graph can hold)."""
        mu, sigma = q.base_dist.loc, q.base_dist.scale
        ratio = (sigma / self.prior_scale).square()
        return 0.5 * (ratio + ((mu - self.prior_loc) / self.prior_scale).square() - 1
                      - ratio.log()).sum(-1)

    def prior(self) -> Distribution:
        return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1,
                           validate_args=False)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder output that parameterises p(x|z) (flattened to [..., out_per_pixel·D])."""
        shape = z.shape[:-1]
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*shape, -1)

    @torch.no_grad()
    def bias_from_data(self, pixel_mean: Tensor, link: Link) -> None:
        """Set the decoder's output bias so that its location outputs at zero input give the
        training pixels' mean `pixel_mean` [D] through `link` (the IWAE code's initialisation:
        logit of the mean clipped to [0.001, 0.999]). Bernoulli-type likelihoods read the same
        outputs as logits, so the logit is their mean too."""
        last = self.decoder if isinstance(self.decoder, nn.Linear) else self.decoder[-1]
        d = self.likelihood.dim
        target = pixel_mean.clamp(0.001, 0.999).logit() if link == Link.sigmoid else pixel_mean
        last.bias[:d] = target.to(last.bias)

    def affine_mean(self) -> tuple[Tensor, Tensor] | None:
        """(W [D, latent], b [D]) when f(z) = Wz + b exactly, else None."""
        if not self.linear_mean:
            return None
        d = self.likelihood.dim
        return self.decoder.weight[:d], self.decoder.bias[:d]

    @contextmanager
    def evaluating(self) -> Iterator[VAE]:
        """The model in eval mode for the block (a learned σ is its test-time one), then back
        in the mode it was in, whatever the block raises."""
        was_training = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was_training)

    def param_groups(self, lr: float) -> list[dict]:
        """All parameters at `lr`, except those the likelihood wants at their own rate."""
        special = self.likelihood.param_groups()
        taken = {id(p) for g in special for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [{"params": rest, "lr": lr}, *special]
