#!/usr/bin/env bash
# The loss lines people copy, each trained as its source writes it (conf/recipe/), one report:
#
#   scripts/recipes.sh [OUT]                (OUT defaults to outputs/recipes)
#
# Grey MNIST dequantised, x = (k + u)/256 (so a density's bits/dim is that of the 8-bit images),
# vaerun's MLP (784-400-20; lightning_bolts: 256 latents, as its loss averages over them),
# Adam 1e-3, EPOCHS epochs (10), SEEDS seeds (1,2,3). Every fixed-sigma Gaussian run also reports
# its test ELBO and bits/dim with sigma calibrated after training (sigma^2 = the training MSE),
# and every run its sample quality (eval.quality_images=10000: test/fid_mean, fid_sample, ...).
# Then `vaerun report`, and the table of docs/recipes/report.md (scripts/recipes_table.py).
# Resumable (finished runs are skipped); LAUNCHER=joblib runs two jobs at once.
set -euo pipefail
OUT=${1:-outputs/recipes}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-1,2,3}
LAUNCHER=${LAUNCHER:-basic}
VAERUN=${VAERUN:-vaerun}
PYTHON=${PYTHON:-python}

$VAERUN train -m recipe=pytorch_examples,keras,antixk,lightning_bolts,pythae,mse_sum,sigma_vae \
    dataset.dequantize=true eval.quality_images=10000 trainer.epochs="$EPOCHS" trainer.seed="$SEEDS" \
    hydra/launcher="$LAUNCHER" trainer.resume=true hydra.sweep.dir="$OUT"
$VAERUN report sweep_dir="$OUT"
"$PYTHON" "$(dirname "$0")/recipes_table.py" "$OUT"
