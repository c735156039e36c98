#!/usr/bin/env bash
# Every reconstruction term vaerun knows, trained the same way, then one report:
#
#   scripts/likelihoods.sh [OUT]            (OUT defaults to outputs/likelihoods)
#
# Grey MNIST (and binarised MNIST for the Bernoulli where it is a proper likelihood), MLP
# 784-400-20, Adam 1e-3, EPOCHS epochs (5), seed 0. The per-pixel variances are also trained
# without their soft lower bound (min_log_sigma=null) to show why it is there: those runs are
# expected to stop on the NaN guard, and the report lists them as failed.
set -uo pipefail
OUT=${1:-outputs/likelihoods}
EPOCHS=${EPOCHS:-5}
VAERUN=${VAERUN:-vaerun}
common=(trainer.epochs="$EPOCHS" hydra/launcher=joblib trainer.resume=true)
status=0

$VAERUN train -m likelihood=bernoulli,continuous_bernoulli,laplace,gaussian "${common[@]}" \
    hydra.sweep.dir="$OUT/fixed" || status=1
# F.mse_loss(x_hat, x) beside a KL summed over latents: per image (sigma^2 = D/2), and over the
# whole batch beside a KL summed over the batch (the examples VAE with MSE for BCE: B D / 2)
$VAERUN train -m likelihood=gaussian loss.recon=sse loss.recon_over_pixels=mean \
    loss.kl_over_batch=mean,sum "${common[@]}" hydra.sweep.dir="$OUT/mean_reduced" || status=1
$VAERUN train -m likelihood=gaussian_learned likelihood.variance=shared,optimal,per_pixel,decoder \
    "${common[@]}" hydra.sweep.dir="$OUT/learned" || status=1
$VAERUN train -m dataset=mnist_binary likelihood=bernoulli "${common[@]}" \
    hydra.sweep.dir="$OUT/binary" || status=1
# expected to fail: sigma -> 0 on always-black pixels without the bound
$VAERUN train -m likelihood=gaussian_learned likelihood.variance=per_pixel,decoder \
    likelihood.min_log_sigma=null "${common[@]}" hydra.sweep.dir="$OUT/unbounded" || true
$VAERUN report sweep_dir="$OUT" || status=1
exit $status
