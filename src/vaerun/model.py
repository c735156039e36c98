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
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaerun.config import Registered, require_at_least
from vaerun.likelihoods import Likelihood


class Link(str, enum.Enum):
    sigmoid = "sigmoid"  # f(z) = sigmoid(decoder output): means in (0, 1), like the pixels
    identity = "identity"  # f(z) = the decoder output, unconstrained


@dataclass
class ModelConfig:
    name: str = "mlp"
    latent_dim: int = 20
    link: Link = Link.sigmoid

    def check(self, key: str) -> None:
        require_at_least(f"{key}.latent_dim", self.latent_dim, 1)


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
    """The VAE paper's MNIST model (and the PyTorch examples VAE): one hidden ReLU layer each way."""

    name = "mlp"

    @dataclass
    class Config(ModelConfig):
        name: str = "mlp"
        hidden: int = 400

        def check(self, key: str) -> None:
            super().check(key)
            require_at_least(f"{key}.hidden", self.hidden, 1)

    @staticmethod
    def build(cfg: Config, image_shape: tuple[int, ...], out_per_pixel: int):
        d = math.prod(image_shape)
        encoder = nn.Sequential(nn.Linear(d, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, 2 * cfg.latent_dim))
        decoder = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, out_per_pixel * d))
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

    @staticmethod
    def build(cfg: Config, image_shape: tuple[int, ...], out_per_pixel: int):
        c, h, w = image_shape
        ch, hid = cfg.channels, cfg.hidden
        h4, w4 = (h + 3) // 4, (w + 3) // 4
        encoder = nn.Sequential(
            nn.Unflatten(1, image_shape),
            nn.Conv2d(c, ch, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * ch * (h // 4) * (w // 4), hid), nn.ReLU(),
            nn.Linear(hid, 2 * cfg.latent_dim),
        )
        decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, hid), nn.ReLU(),
            nn.Linear(hid, 2 * ch * h4 * w4), nn.ReLU(),
            nn.Unflatten(1, (2 * ch, h4, w4)),
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.ReLU(),
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
        self.register_buffer("prior_loc", torch.zeros(cfg.latent_dim))
        self.register_buffer("prior_scale", torch.ones(cfg.latent_dim))

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x) = N(μ, diag σ²), σ = exp(½ · log σ²)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1,
                           validate_args=False)

    def prior(self) -> Distribution:
        return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1,
                           validate_args=False)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder output that parameterises p(x|z) (flattened to [..., out_per_pixel·D])."""
        shape = z.shape[:-1]
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*shape, -1)

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
