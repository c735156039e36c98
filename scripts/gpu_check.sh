#!/usr/bin/env bash
# vaerun's checks on a GPU in one call, most wanted first, each under its own time limit, every
# output under $OUT (default ./gpu_check): the CUDA tests (about 200 s on an H200, where a
# process takes 14 s to import torch); bench.py with the step captured and eager (--compile:
# the epoch, and the whole default run with trainer.compile=true and =false; a warm-up round,
# then ROUNDS=1); vaerun's training step against the bare loop's; then, in what is left of
# TOTAL_S (570 s), a 4-point σ sweep one job at a time against joblib's 4 at once on the device,
# captured and eager. Wheels from scripts/device_wheels.sh go in first.
#
#   WHEELS=.whl bash scripts/gpu_check.sh     # on the GPU machine, from the repository root
set -uo pipefail
OUT=${OUT:-gpu_check}; DEVICE=${DEVICE:-cuda}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/vaerun-site \
        "$WHEELS"/*.whl > "$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 3; }
    export PYTHONPATH=/tmp/vaerun-site${PYTHONPATH:+:$PYTHONPATH}
fi
step() {  # step NAME SECONDS COMMAND...: run it, its output in $OUT/NAME.log, its time and status
    local name=$1 limit=$2 start=$SECONDS; shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $?, $((SECONDS - start)) s (limit $limit)"; tail -4 "$OUT/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  python3 -c "import torch, vaerun, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
step pytest_cuda "${PYTEST_S:-240}" python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step bench "${BENCH_S:-280}" python3 scripts/bench.py --device "$DEVICE" --epochs "${ROUNDS:-1}" \
    --compile --skip-reference --json "$OUT/bench.json"
step steps "${STEPS_S:-40}" python3 scripts/step_overhead.py "$DEVICE" 128 1024
left=$(( ${TOTAL_S:-570} - SECONDS ))  # the sweep: 4 commands of 4 jobs, captured and eager
if (( left > 60 )); then
    step sweep "$left" python3 -c "
import sys, tempfile; sys.path.insert(0, 'scripts'); import bench; from pathlib import Path
print('4 sigmas x 2 epochs on $DEVICE, s:', bench.bench_sweep(Path(tempfile.mkdtemp()), '$DEVICE', 2, 4, ('true', 'false')))"
else
    echo "sweep: skipped, $left s left of TOTAL_S=${TOTAL_S:-570}"
fi
