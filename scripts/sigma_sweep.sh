#!/usr/bin/env bash
# The flagship experiment: is MSE a sound VAE reconstruction term, and what does sigma do?
#
#   scripts/sigma_sweep.sh [OUT]            (OUT defaults to outputs/sigma_sweep)
#
# Grey MNIST, Adam 1e-3, 3 seeds each of:
#   likelihood=gaussian, sigma in {0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 1.5, 2, 3}, for
#     model=mlp (784-400-20, EPOCHS epochs, 10) and model=linear (the linear VAE = pPCA,
#     LINEAR_EPOCHS epochs, 20): measured active units and KL beside pPCA's prediction
#   likelihood=gaussian_learned with variance in {shared, optimal}          (sigma learned)
#   likelihood=bernoulli                                                     (BCE on grey values)
# then `vaerun report` over all 69 runs. Jobs run two at a time (hydra/launcher=joblib), which
# on a 2-core machine is no faster than one after another (README, "Sweeps"); LAUNCHER=basic
# runs them in turn.
# Resumable: run it again and finished runs are skipped, interrupted ones continue.
set -euo pipefail
OUT=${1:-outputs/sigma_sweep}
EPOCHS=${EPOCHS:-10}
LINEAR_EPOCHS=${LINEAR_EPOCHS:-20}
SEEDS=${SEEDS:-1,2,3}
SIGMAS=${SIGMAS:-0.03,0.05,0.1,0.2,0.3,0.5,1,1.5,2,3}
LAUNCHER=${LAUNCHER:-joblib}
VAERUN=${VAERUN:-vaerun}
common=(trainer.seed="$SEEDS" hydra/launcher="$LAUNCHER" trainer.resume=true)

$VAERUN train -m likelihood=gaussian likelihood.sigma="$SIGMAS" trainer.epochs="$EPOCHS" \
    "${common[@]}" hydra.sweep.dir="$OUT/gaussian"
$VAERUN train -m model=linear likelihood=gaussian likelihood.sigma="$SIGMAS" \
    trainer.epochs="$LINEAR_EPOCHS" "${common[@]}" hydra.sweep.dir="$OUT/linear"
$VAERUN train -m likelihood=gaussian_learned likelihood.variance=shared,optimal \
    trainer.epochs="$EPOCHS" "${common[@]}" hydra.sweep.dir="$OUT/gaussian_learned"
$VAERUN train -m likelihood=bernoulli trainer.epochs="$EPOCHS" "${common[@]}" \
    hydra.sweep.dir="$OUT/bernoulli"
$VAERUN report sweep_dir="$OUT"
