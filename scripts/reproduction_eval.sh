#!/usr/bin/env bash
# The IWAE paper's number for a trained experiment=iwae_table1 run, with its Monte Carlo error:
# the run evaluated at k = 5,000 with SEEDS evaluation seeds, each in a copy of its folder (an
# evaluation writes its metrics into the folder it reads), then scripts/mc_error.py's table (the
# mean and the standard error over the seeds). About 7 minutes a seed with THREADS=1 on this
# project's 2-core machine (round 11: 6 min 58 s for seed 1; 12-13 minutes before vaerun mapped
# torch's constant pages, docs/performance.md).
# A seed the run itself was evaluated with at the end of training (its eval.seed, at the same k)
# is read from its metrics.json instead of evaluated again.
#
#   bash scripts/reproduction_eval.sh docs/reproduction/run [OUT]      # SEEDS="0 1 2" K=5000
# THREADS=1 evaluates with one thread (two seeds side by side on two cores: SEEDS=1 and SEEDS=2).
set -euo pipefail
run=$1; out=${2:-outputs/reproduction_eval}; k=${K:-5000}
mkdir -p "$out/iwae_table1"
own=$(python3 - "$run" "$k" <<'PY'
import json, sys, yaml
run, k = sys.argv[1], float(sys.argv[2])
m = json.load(open(f"{run}/metrics.json"))
cfg = yaml.safe_load(open(f"{run}/.hydra/config.yaml"))
done = m.get("status") == "finished" and m.get("test/iwae_k") == k and "test/nll_iwae" in m
print(cfg["eval"]["seed"] if done else "")
PY
)
for seed in ${SEEDS:-0 1 2}; do
  copy="$out/iwae_table1/seed$seed"
  rm -rf "$copy" && mkdir -p "$copy"
  if [ "$seed" = "$own" ]; then
    cp "$run/metrics.json" "$copy/"
    echo "seed $seed: the run's own evaluation at the end of training, $(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"{m['test/iwae_seconds']:.0f} s, nll_iwae = {m['test/nll_iwae']:.6g}\")" "$copy/metrics.json")"
    continue
  fi
  (cd "$run" && tar --exclude=.lock -cf - .) | tar -xf - -C "$copy"
  start=$SECONDS
  vaerun eval run_dir="$copy" eval.iwae_k="$k" eval.seed="$seed" eval.quality_images=0 \
    ${THREADS:+trainer.threads=$THREADS} > "$copy/eval.out" 2>&1
  echo "seed $seed: $((SECONDS - start)) s, $(grep -o 'nll_iwae = [0-9][0-9.]*' "$copy/eval.out" | tail -1)"
done
python3 "$(dirname "$0")/mc_error.py" "$out"
