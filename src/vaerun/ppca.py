"""Probabilistic PCA (Tipping & Bishop 1999): the linear Gaussian VAE's exact counterpart.

A linear VAE with p(x|z) = N(Wz + b, σ²I) and p(z) = N(0, I) has the marginal
p(x) = N(b, WWᵀ + σ²I). With λ_1 ≥ λ_2 ≥ ... the eigenvalues of the training data's covariance,
its optimum at a fixed σ (Lucas et al. 2019) keeps latent dimension i active exactly when
λ_i > σ², spends ½·log(λ_i/σ²) nats of KL on it, and has W = U (Λ − σ²)^½, b = the data mean;
there its ELBO equals its exact log-likelihood. With σ learned too, σ² = the mean of the
discarded eigenvalues. Everything here is in float64, in nats per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def marginal_nll(x: Tensor, w: Tensor, b: Tensor, sigma: float) -> Tensor:
    """−log N(x; b, WWᵀ + σ²I) per image, through the latent dimension (matrix determinant lemma
    and Woodbury): no D×D matrix is formed. x: [N, D], w: [D, L], b: [D]."""
    x, w, b = x.double(), w.double(), b.double()
    d, latent = w.shape
    s2 = float(sigma) ** 2
    m = s2 * torch.eye(latent, dtype=torch.float64, device=w.device) + w.T @ w  # σ²I + WᵀW
    chol = torch.linalg.cholesky(m)
    r = x - b
    proj = torch.linalg.solve_triangular(chol, (r @ w).T, upper=False)  # L⁻¹ Wᵀr, [L, N]
    quad = (r.square().sum(-1) - proj.square().sum(0)) / s2  # rᵀ(WWᵀ + σ²I)⁻¹r
    logdet = (d - latent) * math.log(s2) + 2 * chol.diagonal().log().sum()
    return 0.5 * (d * math.log(2 * math.pi) + logdet + quad)


@dataclass
class Spectrum:
    """The training data's mean and covariance eigen-decomposition, eigenvalues descending."""

    mean: Tensor  # [D]
    eigenvalues: Tensor  # [D]
    vectors: Tensor  # [D, D], columns

    @classmethod
    def of(cls, x: Tensor) -> Spectrum:
        x = x.double()
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / len(x)
        values, vectors = torch.linalg.eigh(cov)
        return cls(mean, values.flip(0).clamp_min(0), vectors.flip(1))

    def sigma_ml(self, latent: int) -> float:
        """pPCA's maximum-likelihood σ for `latent` dimensions: √(mean of the rest)."""
        return math.sqrt(self.eigenvalues[latent:].mean().item())

    def kl_dims(self, sigma: float, latent: int) -> list[float]:
        """pPCA's KL on each of its `latent` dimensions at this σ: ½·log(λ_i/σ²), 0 where
        λ_i ≤ σ² (nats per image)."""
        lam = self.eigenvalues[:latent]
        return (0.5 * torch.log(lam / sigma**2)).clamp_min(0).tolist()

    def reference(self, x_test: Tensor, sigma: float, latent: int) -> dict[str, float]:
        """What the best linear model would do at this σ: its active units, its KL, and its
        exact −log p(x) on `x_test` (nats per image)."""
        lam = self.eigenvalues[:latent]
        active = lam > sigma**2
        kl = 0.5 * torch.log(lam[active] / sigma**2).sum().item()
        scale = (lam - sigma**2).clamp_min(0).sqrt()
        w = self.vectors[:, :latent] * scale
        nll = marginal_nll(x_test.to(w.device), w, self.mean, sigma).mean().item()
        return {"ppca_active_units": float(active.sum()), "ppca_kl": kl, "ppca_nll": nll,
                "ppca_sigma": sigma}


_SPECTRA: dict[str, Spectrum] = {}  # computed once per dataset in a process


def spectrum(key: str, x: Tensor) -> Spectrum:
    """The Spectrum of training data `x`, cached under `key` (e.g. the dataset's config)."""
    if key not in _SPECTRA:
        _SPECTRA.clear()  # one dataset at a time: 5 MB each
        _SPECTRA[key] = Spectrum.of(x)
    return _SPECTRA[key]
