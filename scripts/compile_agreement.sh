#!/usr/bin/env bash
# How far one epoch of the default run moves when only float rounding changes (#38's "the same
# test ELBO to 1e-4 relative"): the compiled step against the eager one, and, as the floor any
# two float32 trainings stand on, eager runs whose arithmetic differs only in order (torch's
# threads; Adam fused or for-each). Same seed, same data order, same noise in every run.
#
#   bash scripts/compile_agreement.sh [OUT]     # about 3 minutes on 2 cores
set -euo pipefail
out=${1:-outputs/compile_agreement}
run() {  # name, overrides...
  local name=$1; shift
  vaerun train trainer.epochs=1 eval.iwae_k=0 eval.quality_images=0 "$@" \
    "hydra.run.dir=$out/$name" > /dev/null
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:>24}: test/elbo {m['test/elbo']:.6f}\")" \
    "$out/$name/metrics.json" "$name"
}
mkdir -p "$out"
run eager trainer.compile=false trainer.threads=2
run compiled trainer.compile=true trainer.threads=2
run eager_1_thread trainer.compile=false trainer.threads=1
run eager_foreach_adam trainer.compile=false trainer.threads=2 optimizer.fused=false
python3 - "$out" <<'EOF'
import json, sys
e = {n: json.load(open(f"{sys.argv[1]}/{n}/metrics.json"))["test/elbo"]
     for n in ("eager", "compiled", "eager_1_thread", "eager_foreach_adam")}
for n in ("compiled", "eager_1_thread", "eager_foreach_adam"):
    print(f"{n:>24}: {abs(e[n] - e['eager']) / abs(e['eager']):.2e} relative to eager")
EOF
