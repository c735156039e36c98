#!/usr/bin/env python3
"""The recipes' table from a finished `scripts/recipes.sh` sweep: one row per recipe, mean ± std
over its seeds, with the loss as written and its source (from the run's own .hydra/config.yaml),
and seed 1's samples. Writes OUT/recipes.md and copies each recipe's samples.png beside it.

    python scripts/recipes_table.py OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml

COLUMNS = [("test/implied_sigma", "implied σ", 3), ("test/implied_beta", "implied β", 3),
           ("test/active_units", "active units", 1), ("test/kl", "KL (nats)", 1),
           ("test/mse", "test MSE", 4), ("test/bits_per_dim", "bits/dim as trained", 3),
           ("test/bits_per_dim_calibrated", "bits/dim, σ calibrated", 3),
           ("test/sigma_calibrated", "calibrated σ", 3), ("test/fid_mean", "FID, means", 1),
           ("test/fid_sample", "FID, draws", 1),
           ("test/sample_class_entropy", "class entropy (nats)", 2)]


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) < 2 or statistics.stdev(values) == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(out: Path) -> int:
    rows: dict[str, list[tuple[Path, dict, dict]]] = {}
    def job_number(path: Path) -> int:  # sweep folders are N_overrides: in the sweep's order
        head = path.parent.name.split("_", 1)[0]
        return int(head) if head.isdigit() else 1 << 30

    for m in sorted(out.glob("*/metrics.json"), key=job_number):
        metrics = json.loads(m.read_text())
        if metrics.get("status") != "finished":
            continue
        cfg = yaml.safe_load((m.parent / ".hydra" / "config.yaml").read_text())
        rows.setdefault(cfg["loss"]["name"], []).append((m.parent, metrics, cfg))
    head = ["recipe", "source", "loss as written", "n", *[c[1] for c in COLUMNS], "samples"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, runs in rows.items():
        runs.sort(key=lambda r: r[2]["trainer"]["seed"])
        run, _, cfg = runs[0]
        (out / "samples").mkdir(exist_ok=True)
        picture = out / "samples" / f"{name}.png"
        if (run / "images" / "samples.png").exists():
            shutil.copyfile(run / "images" / "samples.png", picture)
        cells = [f"`{name}`", cfg["loss"]["source"], f"`{cfg['loss']['written']}`", str(len(runs))]
        for key, _, digits in COLUMNS:
            cells.append(cell([m[key] for _, m, _ in runs if m.get(key) is not None], digits))
        cells.append(f"![{name}](samples/{name}.png)" if picture.exists() else "—")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "recipes.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'recipes.md'} ({len(rows)} recipes)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder scripts/recipes.sh wrote")
    sys.exit(main(parser.parse_args().out))
