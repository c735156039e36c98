#!/usr/bin/env python3
"""The yardstick's table (docs/results.md) from a finished `scripts/yardstick.sh OUT`: one row
per reconstruction term, mean ± std over its seeds of bits/dim (IWAE k = 100 and −ELBO) and of
the sample-quality scores, with seed 1's Monte Carlo standard error of the k = 100 bound
(OUT/mc_error, 5 evaluation seeds) and its k = 1000 bound (OUT/iwae_k1000) where measured.

    python scripts/yardstick_table.py outputs/yardstick
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def row_name(run: Path) -> str:
    """`likelihood=gaussian,likelihood.sigma=0.1`-style name of a run's row (seed dropped)."""
    name = re.sub(r"^\d+_", "", run.name)
    parts = [p for p in name.split(",") if not p.startswith("trainer.seed=")]
    return f"{run.parent.name}: " + ",".join(parts)


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    if len(values) > 1:
        return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return f"{mean:.{digits}f}"


def mc_error(out: Path, row: Path) -> str:
    folder = out / "mc_error" / f"{row.parent.name}_{row.name}"
    vals = [json.loads(p.read_text()).get("test/bits_per_dim")
            for p in sorted(folder.glob("seed*/metrics.json"))]
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return "not run"
    return f"{statistics.stdev(vals) / len(vals) ** 0.5:.1e} ({len(vals)} seeds)"


def k1000(out: Path, row: Path) -> str:
    path = out / "iwae_k1000" / f"{row.parent.name}_{row.name}" / "metrics.json"
    if not path.is_file():
        return "not run"
    m = json.loads(path.read_text())
    return f"{m['test/bits_per_dim']:.3f}" if m.get("test/iwae_k") == 1000 else "not run"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder scripts/yardstick.sh wrote")
    out = parser.parse_args().out
    rows: dict[str, list[Path]] = defaultdict(list)
    for metrics in sorted((out / "terms").glob("*/*/metrics.json")):
        rows[row_name(metrics.parent)].append(metrics.parent)
    print("| row | n | bits/dim, IWAE k = 100 | its MC standard error, seed 1 | seed 1, k = 1000 "
          "| bits/dim, −ELBO | FID of means | FID of draws | class entropy (nats) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    table = []
    for name, runs in rows.items():
        ms = [json.loads((r / "metrics.json").read_text()) for r in runs]
        ms = [m for m in ms if m.get("status") == "finished"]
        seed1 = next((r for r in runs if "trainer.seed=1" in r.name), runs[0])

        def vals(key: str, ms=ms) -> list[float]:
            return [m[key] for m in ms if key in m]

        bpd = vals("test/bits_per_dim")
        table.append((statistics.mean(bpd) if bpd else 99, "| " + " | ".join([
            name, str(len(ms)), cell(bpd, 3), mc_error(out, seed1), k1000(out, seed1),
            cell(vals("test/bits_per_dim_elbo"), 3), cell(vals("test/fid_mean"), 0),
            cell(vals("test/fid_sample"), 0), cell(vals("test/sample_class_entropy"), 2)]) + " |"))
    for _, line in sorted(table):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
