#!/usr/bin/env bash
# The front hall's size as issue #36 counts it: its modules, and any module of src/ that imports
# hydra, omegaconf, argparse, signal or submitit (lines, wc -l).
cd "$(dirname "$0")/../src/vaerun" || exit 1
{ ls cli.py gate.py api.py config.py assemble.py rundir.py logs.py signals.py slurm.py runtime.py errors.py
  grep -lE "^\s*(import|from) (hydra|omegaconf|argparse|signal|submitit)\b" ./*.py | sed 's|^\./||'
} | sort -u | xargs wc -l
