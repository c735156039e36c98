#!/usr/bin/env bash
# Wheels for running vaerun's GPU checks on a machine that has torch (and vaerun's other
# compiled dependencies) but no package index: vaerun itself and the pure-Python packages a
# torch-only image usually lacks, at the versions installed here. Carry the folder to the
# machine and run scripts/gpu_check.sh there.
#
#   bash scripts/device_wheels.sh .whl        # here, where pip reaches a package index
set -euo pipefail
dir=${1:?usage: scripts/device_wheels.sh DIR}
mkdir -p "$dir"
pins=()
for name in hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher \
            hydra-submitit-launcher submitit; do
    version=$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}' || true)
    [ -n "$version" ] || { echo "error: $name is not installed here: pip install '.[test]' first" >&2; exit 2; }
    pins+=("$name==$version")
done
python3 -m pip wheel -q --no-deps -w "$dir" . "${pins[@]}"
ls "$dir"/*.whl
