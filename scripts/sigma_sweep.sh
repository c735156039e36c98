#!/usr/bin/env bash
# The flagship experiment: is MSE a sound VAE reconstruction term, and what does sigma do?
#
#   scripts/sigma_sweep.sh [OUT]            (OUT defaults to outputs/sigma_sweep)
#
# Grey MNIST, MLP 784-400-20, Adam 1e-3, EPOCHS epochs (10), 3 seeds each of:
#   likelihood=gaussian with sigma in {0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1}   (MSE at fixed sigma)
#   likelihood=gaussian_learned with variance in {shared, optimal}          (sigma learned)
#   likelihood=bernoulli                                                     (BCE on grey values)
# then `vaerun report` over all 30 runs. Jobs run two at a time (hydra/launcher=joblib): on a
# 2-core machine that is ~20% faster than one after another; LAUNCHER=basic runs them in turn.
set -euo pipefail
OUT=${1:-outputs/sigma_sweep}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-1,2,3}
LAUNCHER=${LAUNCHER:-joblib}
VAERUN=${VAERUN:-vaerun}
common=(trainer.epochs="$EPOCHS" trainer.seed="$SEEDS" hydra/launcher="$LAUNCHER" trainer.resume=true)

$VAERUN train -m likelihood=gaussian likelihood.sigma=0.03,0.05,0.1,0.2,0.3,0.5,1 "${common[@]}" \
    hydra.sweep.dir="$OUT/gaussian"
$VAERUN train -m likelihood=gaussian_learned likelihood.variance=shared,optimal "${common[@]}" \
    hydra.sweep.dir="$OUT/gaussian_learned"
$VAERUN train -m likelihood=bernoulli "${common[@]}" hydra.sweep.dir="$OUT/bernoulli"
$VAERUN report sweep_dir="$OUT"
