#!/usr/bin/env python3
"""The Monte Carlo error of the IWAE bound, per row: reads DIR/ROW/seedS/metrics.json (the same
trained run evaluated with eval.seed=S, as scripts/yardstick.sh writes them) and prints, per
row, the mean and the standard error (std over the seeds / √n) of test/nll_iwae in nats per
image, and of test/bits_per_dim, as a markdown table.

    python scripts/mc_error.py outputs/yardstick/mc_error
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the folder of ROW/seedS/metrics.json")
    root = parser.parse_args().dir
    print("| row (seed 1) | k | eval seeds | nll_iwae (nats) | its standard error (nats) "
          "| bits/dim | its standard error (bits/dim) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in sorted(p for p in root.iterdir() if p.is_dir()):
        ms = [json.loads(f.read_text()) for f in sorted(row.glob("seed*/metrics.json"))]
        ms = [m for m in ms if "test/nll_iwae" in m]
        if len(ms) < 2:
            continue
        cells = [row.name, f"{ms[0]['test/iwae_k']:.0f}", str(len(ms))]
        for key in ("test/nll_iwae", "test/bits_per_dim"):
            vals = [m[key] for m in ms if key in m]
            if len(vals) < 2:
                cells += ["—", "—"]
                continue
            cells += [f"{statistics.mean(vals):.4f}",
                      f"{statistics.stdev(vals) / len(vals) ** 0.5:.2g}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
