#!/usr/bin/env bash
# The IWAE paper's number for a trained experiment=iwae_table1 run, with its Monte Carlo error:
# the run evaluated at k = 5,000 with SEEDS evaluation seeds, each in a copy of its folder (an
# evaluation writes its metrics into the folder it reads), then scripts/mc_error.py's table (the
# mean and the standard error over the seeds). About 10 minutes a seed on 2 idle CPU cores.
#
#   bash scripts/reproduction_eval.sh docs/reproduction/run [OUT]      # SEEDS="1 2 3" K=5000
set -euo pipefail
run=$1; out=${2:-outputs/reproduction_eval}
mkdir -p "$out/iwae_table1"
for seed in ${SEEDS:-1 2 3}; do
  copy="$out/iwae_table1/seed$seed"
  rm -rf "$copy" && mkdir -p "$copy"
  (cd "$run" && tar --exclude=.lock -cf - .) | tar -xf - -C "$copy"
  start=$SECONDS
  vaerun eval run_dir="$copy" eval.iwae_k="${K:-5000}" eval.seed="$seed" eval.quality_images=0 \
    > "$copy/eval.out" 2>&1
  echo "seed $seed: $((SECONDS - start)) s, $(grep -o 'nll_iwae [0-9][0-9.]*' "$copy/eval.out" | tail -1)"
done
python3 "$(dirname "$0")/mc_error.py" "$out"
