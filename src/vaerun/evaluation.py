"""Evaluation beyond the ELBO, in nats per image, on the test set:

    test/nll_iwae   −log p(x) ≈ −(logsumexp_k log w_k − log k),  w = p(x|z) p(z) / q(z|x)
                    (Burda et al. 2016; a tighter bound than −ELBO, exact as k → ∞)
    test/bits_per_dim   from nll_iwae: nll / (D ln 2) for binary data and for a likelihood of
                    the 8-bit grey levels; (nll + D ln 256) / (D ln 2) for 8-bit data dequantised
                    to (k + u)/256 under a density; absent where it means nothing (the log says
                    why). test/bits_per_dim_elbo: the same from −elbo; `bits_per_dim_data` in
                    metrics.json says which data ("binary", "8bit" or "continuous")
    test/active_units   latent dims with Cov_x(E_q[z_i|x]) > 0.01 (an absolute threshold, in
                    the prior's units: a code the encoder shrank counts as inactive however
                    much KL it carries; read it beside kl_dim_min)
    test/kl_dim_max, test/kl_dim_min   the mean KL of the most and least used latent dims
    test/ppca_active_units, test/ppca_kl, test/ppca_nll, test/ppca_sigma   where p(x|z) is
                    N(f(z), σ²I): what the best linear model (pPCA) would do at this σ
                    (pPCA's own σ when σ is learned), from the training data's eigenvalues
    test/nll_exact  the linear VAE's exact −log p(x) = −log N(x; b, WWᵀ + σ²I)

`vaerun eval run_dir=PATH eval.iwae_k=5000` reruns it on a saved run and merges the results into
its metrics.json and TensorBoard; training runs it once at its end with eval.iwae_k (100).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence
from tqdm import tqdm

from vaerun import ppca, quality
from vaerun.data import Dataset, to_float
from vaerun.elbo import Objective, evaluate, seeded
from vaerun.logs import ProgressLines, RunLog, phase
from vaerun.model import VAE
from vaerun.pictures import all_pictures, draw, save_png

log = logging.getLogger("vaerun")

ACTIVE_THRESHOLD = 0.01


def chunk_elements(device: torch.device) -> int:
    """Decoder outputs held at once while importance sampling: on the CPU 8 MiB of float32,
    which stays in cache; on a GPU 512 MiB, so that a chunk is many samples, not a few."""
    return 1 << 21 if device.type == "cpu" else 1 << 27


def log_weights(vae: VAE, x: Tensor, k: int, q: Distribution | None = None) -> Tensor:
    """log w = log p(x|z) + log p(z) − log q(z|x) for k samples z ~ q(z|x): shape [k, B]
    (`q`: the posterior of x, if already computed)."""
    q = vae.posterior(x) if q is None else q
    z = q.sample((k,))
    log_px_z = vae.likelihood(vae.decode(z), x).log_prob(x)
    return log_px_z + vae.prior().log_prob(z) - q.log_prob(z)


@torch.inference_mode()
def iwae_nll(vae: VAE, x: Tensor, k: int, batch_size: int, seed: int,
             progress: bool = True, poll: Callable[[], None] | None = None,
             progress_seconds: float | None = None) -> Tensor:
    """The k-sample importance-weighted estimate of −log p(x) per image (nats), in memory
    bounded for any k: for each batch of images the posterior is computed once, then samples
    are drawn in chunks of about `chunk_elements` decoder outputs and combined with logaddexp.
    `poll()` is called between chunks (it may raise to stop the evaluation); where stderr is
    no terminal, a progress line every `progress_seconds`."""
    out_dim = vae.likelihood.params_per_pixel * vae.likelihood.dim
    chunk = max(1, chunk_elements(x.device) // (min(batch_size, len(x)) * out_dim))
    batches = range(0, len(x), batch_size)
    total = len(batches) * math.ceil(k / chunk)
    bar = tqdm(total=total, desc=f"IWAE k={k}", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    lines = ProgressLines(f"test: IWAE k={k}", total, "chunks of samples",
                          progress_seconds if progress else None)
    nll, done = [], 0
    try:
        with vae.evaluating(), seeded(seed, x.device):
            for i in batches:
                xb = x[i: i + batch_size]
                q = vae.posterior(xb)
                lse = torch.full((len(xb),), -math.inf, device=x.device)
                for j in range(0, k, chunk):
                    lw = log_weights(vae, xb, min(chunk, k - j), q)
                    lse = torch.logaddexp(lse, lw.logsumexp(0))
                    bar.update()
                    done += 1
                    lines.update(done)
                    if poll is not None:
                        poll()
                nll.append(math.log(k) - lse)
    finally:
        bar.close()
        lines.close()
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
        n = len(data.test)
        log.info("test: IWAE bound on -log p(x), %d importance samples for each of %d test "
                 "images (%.3g decoder passes; eval.iwae_k=0 skips it)", e.iwae_k, n, e.iwae_k * n)
        started = time.perf_counter()
        nll = iwae_nll(vae, data.test, e.iwae_k, e.batch_size, e.seed, progress, poll,
                       cfg.trainer.progress_seconds).mean().item()
        seconds = time.perf_counter() - started
        log.info("test: IWAE took %.1f s: nll_iwae %.4f nats per image", seconds, nll)
        out.update(nll_iwae=nll, iwae_k=float(e.iwae_k), iwae_seconds=seconds)
        bpd, why = vae.likelihood.bits_per_dim(nll, data.values)
        if bpd is None:
            log.info("no test/bits_per_dim: %s", why)
        else:
            out["bits_per_dim"] = bpd
    out.update(exact_metrics(vae, data, cfg.trainer.progress_seconds))
    return out


def train_images(data: Dataset) -> Tensor:
    """All training images with one fixed draw of their noise (binarisation, dequantisation)."""
    return data.batch(torch.arange(len(data.train), device=data.train.device), data.noise(0))


PPCA_MOST = 2048  # values per image past which no covariance is decomposed (MNIST: 784; 3072: a minute)


@torch.no_grad()
def exact_metrics(vae: VAE, data: Dataset, seconds: float | None = None) -> dict[str, float]:
    """Where p(x|z) = N(f(z), σ²I): the pPCA reference at this σ (any model), and for a linear
    mean f(z) = Wz + b the exact −log p(x) = −log N(x; b, WWᵀ + σ²I) (nats per image)."""
    with vae.evaluating():  # a learned σ at test time (variance=optimal: its average)
        iso = vae.likelihood.isotropic_sigma()
    if iso is None:
        return {}
    sigma, learned = iso
    if data.dim > PPCA_MOST:
        log.info("no pPCA reference: the covariance of D = %d values is a %d x %d matrix, past "
                 "the %d vaerun decomposes (minutes on a CPU)", data.dim, data.dim, data.dim, PPCA_MOST)
        return {}
    with phase("test: pPCA's reference (the training images' covariance)", seconds):
        spec = ppca.spectrum(f"{data.name}:{data.cfg!r}", to_float(train_images(data)))
    latent = vae.latent_dim
    out = spec.reference(data.test, spec.sigma_ml(latent) if learned else sigma, latent)
    out["ppca_kl_dims"] = spec.kl_dims(out["ppca_sigma"], latent)
    affine = vae.affine_mean()
    if affine is not None:
        w, b = affine
        out["nll_exact"] = ppca.marginal_nll(data.test, w, b, sigma).mean().item()
    return out


def write_pictures(vae: VAE, data: Dataset, runlog: RunLog, step: int,
                   kl_dims: Tensor | None = None, n_images: int = 2000) -> None:
    """All pictures into TensorBoard (images tab) and as PNGs under the run's images/;
    traversals follow the most used latent dims (kl_dims, else measured on n_images)."""
    if kl_dims is None:
        _, kl_dims = posterior_stats(vae, data.test[:n_images], 1000)
    for name, grid in all_pictures(vae, data.test[:n_images], kl_dims).items():
        runlog.writer.add_image(f"images/{name}", grid, step)
        save_png(grid, runlog.rd.file(runlog.rd.IMAGES) / f"{name}.png")


@torch.no_grad()
def calibrated(vae: VAE, data: Dataset, cfg: Any, obj: Objective, test: dict[str, Any],
               progress: bool = True, poll: Callable[[], None] | None = None) -> dict[str, float]:
    """For a fixed-σ Gaussian: the same encoder and decoder with σ set to the value that
    maximises the training images' ELBO (not their likelihood: the ELBO's reconstruction term),
    σ² = their MSE (z ~ q, as the ELBO draws it): the test ELBO at
    that σ in closed form from the test MSE and KL (`test`: this step's test/* terms), and the
    IWAE bound's bits/dim with it. {} for any other likelihood."""
    lik = vae.likelihood
    if lik.name != "gaussian" or "test/mse" not in test:
        return {}
    with vae.evaluating():
        mse = evaluate(vae, train_images(data), obj, cfg.eval.batch_size, cfg.eval.seed)["mse"]
    sigma, d = math.sqrt(mse), data.dim
    out = {"sigma_calibrated": sigma, "elbo_calibrated": -d * test["test/mse"] / (2 * mse)
           - 0.5 * d * math.log(2 * math.pi * mse) - test["test/kl"]}
    bpd, _ = lik.bits_per_dim(-out["elbo_calibrated"], data.values)
    if bpd is not None:
        out["bits_per_dim_elbo_calibrated"] = bpd
    if cfg.eval.iwae_k > 0 and bpd is not None:
        was = math.sqrt(lik.variance())
        lik.calibrated(sigma)
        try:
            nll = iwae_nll(vae, data.test, cfg.eval.iwae_k, cfg.eval.batch_size, cfg.eval.seed,
                           progress, poll, cfg.trainer.progress_seconds).mean().item()
        finally:
            lik.calibrated(was)
        out["nll_iwae_calibrated"] = nll
        out["bits_per_dim_calibrated"] = lik.bits_per_dim(nll, data.values)[0]
    log.info("test: sigma calibrated on the training images: %.4g (trained at %.4g); elbo %.4f "
             "-> %.4f nats per image", sigma, math.sqrt(lik.variance()), test["test/elbo"],
             out["elbo_calibrated"])
    return out


@torch.no_grad()
def sample_quality(vae: VAE, data: Dataset, cfg: Any) -> dict[str, float]:
    """The second axis (vaerun.quality): Fréchet distances of n decoder means of z ~ p(z), of
    one draw x ~ p(x|z) each, and of the test images' reconstructions, to the test images in
    the shipped MNIST classifier's features; and the entropy of its predicted classes over the
    means; n = eval.quality_images (0: none), at most the number of test images; and the
    seconds it all took (the classifier's import and the test images' statistics included).
    {} where the images are no 28×28 digits (the classifier knows digits only)."""
    n = min(cfg.eval.quality_images, len(data.test))
    digits = quality.by_digits(data.name, data.image_shape)
    if not n or not (digits or cfg.eval.inception_weights):
        if n:
            log.info("no sample quality: vaerun's classifier knows 28x28 grey digits only; "
                     "eval.inception_weights=PATH (Inception v3 weights for torchmetrics' FID) "
                     "scores these images")
        return {}
    started, test = time.perf_counter(), data.test[:n]
    metric = (quality.fid_metric(f"{data.name}:{data.cfg!r}:{len(test)}", test) if digits else
              quality.inception_metric(cfg.eval.inception_weights, test, data.image_shape))
    lik, means, draws, recons = vae.likelihood, [], [], []
    with vae.evaluating(), seeded(cfg.eval.seed, data.test.device):
        for z in vae.prior().sample((n,)).split(cfg.eval.batch_size):
            out = vae.decode(z)
            means.append(lik.mean(out))
            draws.append(draw(vae, out))
        for x in test.split(cfg.eval.batch_size):
            recons.append(lik.mean(vae.decode(vae.posterior(x).mean)))
    fid_mean, entropy = quality.frechet(metric, torch.cat(means))
    return {"fid_mean": fid_mean, "fid_sample": quality.frechet(metric, torch.cat(draws))[0],
            "fid_recon": quality.frechet(metric, torch.cat(recons))[0],
            "sample_class_entropy": entropy, "quality_images": float(n),
            "quality_seconds": time.perf_counter() - started}


def evaluate_run(vae: VAE, data: Dataset, cfg: Any, runlog: RunLog, step: int,
                 progress: bool = True, poll: Callable[[], None] | None = None
                 ) -> dict[str, float]:
    """Every metric of the module docstring, into TensorBoard and metrics.json, and the
    pictures; `poll()` is called at safe points (it may raise to stop)."""
    if poll is not None:
        poll()
    every = cfg.trainer.progress_seconds
    with phase("test: the posterior of every test image", every):
        variances, kl_dims = posterior_stats(vae, data.test, cfg.eval.batch_size)
    metrics = final_metrics(vae, data, cfg, variances, kl_dims, progress, poll)
    obj = Objective(cfg.loss, cfg.beta, data.dim, vae.latent_dim)
    metrics.update(obj.implied(cfg.trainer.batch_size))
    if vae.likelihood.name == "gaussian":
        with phase("test: sigma calibrated on the training images", every):
            metrics.update(calibrated(vae, data, cfg, obj, runlog.metrics, progress, poll))
    if poll is not None:
        poll()
    if cfg.eval.quality_images:
        with phase("test: sample quality (Frechet distances in the classifier's features)", every):
            metrics.update(sample_quality(vae, data, cfg))
    if "bits_per_dim" in metrics and "test/elbo" in runlog.metrics:  # the ELBO's bound too
        metrics["bits_per_dim_elbo"] = vae.likelihood.bits_per_dim(
            -runlog.metrics["test/elbo"], data.values)[0]
    if "nll_exact" in metrics:
        gaps = [f"-elbo {-runlog.metrics['test/elbo'] - metrics['nll_exact']:+.4f}"
                if "test/elbo" in runlog.metrics else "",
                f"nll_iwae (k={cfg.eval.iwae_k}) {metrics['nll_iwae'] - metrics['nll_exact']:+.4f}"
                if "nll_iwae" in metrics else ""]
        log.info("exact -log p(x) = %.4f nats per image; the bounds lie above it by: %s",
                 metrics["nll_exact"], ", ".join(g for g in gaps if g))
    predicted = metrics.pop("ppca_kl_dims", None)
    runlog.rd.write_json(runlog.rd.KL, {
        "step": step, "measured": kl_dims.tolist(), "ppca": predicted,
        "ppca_sigma": metrics.get("ppca_sigma"), "about": "mean KL(q(z_i|x) || p(z_i)) of each "
        "latent dimension over the test images, nats; ppca: 1/2 log(lambda_i / sigma^2) of the "
        "training data's top eigenvalues at the run's sigma, 0 where lambda_i <= sigma^2"})
    runlog.scalars("test", metrics, step)
    runlog.update_split("test", metrics, step, bits_per_dim_data=data.values)
    with phase("test: pictures (reconstructions, samples, traversals)", every):
        write_pictures(vae, data, runlog, step, kl_dims)
        runlog.flush()
    return metrics
