"""`vaerun report sweep_dir=PATH`: the answer to a sweep as a table and a few plots.

Reads every run under PATH (its metrics.json, its .hydra/overrides.yaml, its TensorBoard events
and checkpoint), groups the runs that differ only in `trainer.seed`, and writes into PATH:
report.csv and report.md (mean and std over seeds of every test metric, n), rate_distortion.png,
sweep.png, curves.png and samples.png. matplotlib, TensorBoard and torch are imported inside
the functions that draw, so a report of nothing fails fast.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaerun import checkpoint
from vaerun.atomic import read_json, write_atomic
from vaerun.errors import UserError

log = logging.getLogger("vaerun")

SEED = "trainer.seed"
IGNORED = ("trainer.resume", "trainer.device", "trainer.threads")
SWEEP_METRICS = ["test/elbo", "test/kl", "test/mse", "test/sigma_optimal", "test/nll_iwae",
                 "test/bits_per_dim"]
UNITS = {"mse": "per pixel", "sigma": "", "sigma_optimal": "", "bits_per_dim": "bits/dim",
         "active_units": "count", "iwae_k": "samples", "kl_dim_max": "nats", "kl_dim_min": "nats"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]

    @property
    def status(self) -> str:
        return self.metrics.get("status", "unknown")


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]  # the varying overrides (seed excluded)
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key if v != "-") or "all runs"

    def values(self, metric: str) -> list[float]:
        vals = [r.metrics.get(metric) for r in self.runs]
        return [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]

    def mean_std(self, metric: str) -> tuple[float, float]:
        v = self.values(metric)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run directory under sweep_dir: one holding metrics.json or .hydra/overrides.yaml."""
    dirs = {p.parent for p in sweep_dir.rglob("metrics.json")}
    dirs |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    runs = []
    for d in sorted(dirs):
        if d == sweep_dir and len(dirs) > 1:
            continue
        ov_file = d / ".hydra" / "overrides.yaml"
        items = yaml.safe_load(ov_file.read_text()) if ov_file.exists() else []
        overrides = {}
        for item in items or []:
            k, _, v = str(item).partition("=")
            k = k.lstrip("+~")
            if not k.startswith("hydra") and k not in IGNORED:
                overrides[k] = v
        try:
            metrics = read_json(d / "metrics.json")
        except (FileNotFoundError, ValueError):
            metrics = {"status": "not started"}
        runs.append(Run(d, overrides, metrics))
    return runs


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        key = tuple((k, r.overrides.get(k, "-")) for k in keys if k != SEED)
        groups.setdefault(key, Group(key)).runs.append(r)
    return sorted(groups.values(), key=lambda g: [_sortable(v) for _, v in g.key])


def _sortable(v: str) -> tuple:
    n = _number(v)
    return (0, n, "") if n is not None else (1, 0.0, v)


def _number(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def metric_names(groups: list[Group]) -> list[str]:
    names = {k for g in groups for r in g.runs for k, v in r.metrics.items()
             if k.startswith("test/") and isinstance(v, (int, float))}
    first = [m for m in ["test/loss", "test/elbo", "test/log_px_z", "test/kl", "test/mse",
                         "test/bce", "test/nll_iwae", "test/bits_per_dim", "test/sigma",
                         "test/sigma_optimal"] if m in names]
    return first + sorted(names - set(first))


def write_csv(path: Path, groups: list[Group], keys: list[str], metrics: list[str]) -> None:
    cols = [k for k in keys if k != SEED]
    rows = [[*cols, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]]
    for g in groups:
        row: list[Any] = [v for _, v in g.key] + [len(g.runs)]
        for m in metrics:
            mean, std = g.mean_std(m)
            row += ["" if math.isnan(mean) else repr(mean), "" if math.isnan(std) else repr(std)]
        rows.append(row)

    def write(f):
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        f.write(buf.getvalue().encode())

    write_atomic(path, write)


def write_markdown(path: Path, sweep_dir: Path, groups: list[Group], keys: list[str],
                   metrics: list[str], unfinished: list[Run]) -> None:
    cols = [k for k in keys if k != SEED]
    short = [m.split("/", 1)[1] for m in metrics]
    head = cols + ["n"] + [f"{s} ({UNITS.get(s, 'nats')})".replace(" ()", "") for s in short]
    lines = [f"# Sweep report: {sweep_dir}", "",
             "Mean ± std over seeds of the final test metrics; nats per image unless marked.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in groups:
        cells = [v for _, v in g.key] + [str(len(g.runs))]
        for m in metrics:
            mean, std = g.mean_std(m)
            cells.append("—" if math.isnan(mean) else f"{mean:.4g} ± {std:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Unfinished or failed runs", ""]
    if unfinished:
        for r in unfinished:
            why = f": {r.metrics['error']}" if r.metrics.get("error") else ""
            lines.append(f"- `{r.path.relative_to(sweep_dir)}` — {r.status}{why}")
    else:
        lines.append("None: every run finished.")
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, lambda f: f.write(buf.getvalue()))


def plot_rate_distortion(path: Path, groups: list[Group]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, g in enumerate(groups):
        pts = [(r.metrics.get("test/mse"), r.metrics.get("test/kl")) for r in g.runs]
        pts = [p for p in pts if None not in p]
        if not pts:
            continue
        ax.scatter(*zip(*pts, strict=True), color=f"C{i % 10}", label=g.label, s=25)
    ax.set_xlabel("distortion: test/mse (per pixel)")
    ax.set_ylabel("rate: test/kl (nats per image)")
    ax.set_xscale("log")
    ax.set_title("rate against distortion, one point per run")
    ax.legend(fontsize=7, loc="best")
    _savefig(fig, path)
    plt.close(fig)


def swept_numeric_key(groups: list[Group], keys: list[str]) -> str | None:
    for k in keys:
        if k == SEED:
            continue
        vals = [dict(g.key).get(k) for g in groups]
        nums = {_number(v) for v in vals if _number(v) is not None}
        if len(nums) > 1:
            return k
    return None


def plot_sweep(path: Path, groups: list[Group], keys: list[str]) -> None:
    import matplotlib.pyplot as plt

    x_key = swept_numeric_key(groups, keys)
    metrics = [m for m in SWEEP_METRICS if any(g.values(m) for g in groups)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.3 * max(1, len(metrics)), 3.4),
                             squeeze=False)
    series: dict[str, list[Group]] = {}
    refs: list[Group] = []
    for g in groups:
        d = dict(g.key)
        if x_key is not None and _number(d.get(x_key)) is not None:
            rest = ", ".join(f"{k}={v}" for k, v in g.key if k != x_key and v != "-")
            series.setdefault(rest, []).append(g)
        else:
            refs.append(g)
    xs_all = [_number(dict(g.key).get(x_key)) for gs in series.values() for g in gs] if x_key else []
    log_x = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
    for ax, m in zip(axes[0], metrics, strict=False):
        for i, (label, gs) in enumerate(series.items()):
            pts = sorted((_number(dict(g.key)[x_key]), *g.mean_std(m)) for g in gs)
            pts = [p for p in pts if not math.isnan(p[1])]
            if pts:
                x, y, e = zip(*pts, strict=True)
                ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, color=f"C{i}",
                            label=label or x_key)
        for j, g in enumerate(refs):
            mean, std = g.mean_std(m)
            if not math.isnan(mean):
                ax.axhline(mean, ls="--", lw=1, color=f"C{(j + len(series)) % 10}",
                           label=g.label)
        ax.set_title(m, fontsize=9)
        if x_key:
            ax.set_xlabel(x_key)
        if log_x:
            ax.set_xscale("log")
        if m == "test/kl" and all(v > 0 for g in groups for v in g.values(m)):
            ax.set_yscale("log")
        if m == "test/elbo" and log_x:
            ax.set_yscale("symlog", linthresh=100)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("final test metrics over the sweep (mean ± std over seeds; dashed: runs "
                 f"without {x_key})" if x_key else "final test metrics", fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(path: Path, groups: list[Group]) -> None:
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, g in enumerate(groups):
        curves = []
        for r in g.runs:
            acc = EventAccumulator(str(r.path), size_guidance={"scalars": 0})
            acc.Reload()
            if "test/loss" in acc.Tags()["scalars"]:
                curves.append([e.value for e in acc.Scalars("test/loss")])
        n = min((len(c) for c in curves), default=0)
        if n:
            mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
            ax.plot(range(1, n + 1), mean, marker="o", ms=3, color=f"C{i % 10}", label=g.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test loss (nats per image)")
    ax.set_yscale("symlog", linthresh=100)
    ax.legend(fontsize=7)
    _savefig(fig, path)
    plt.close(fig)


def plot_samples(path: Path, groups: list[Group]) -> None:
    """Per group (its first finished run): 8 prior samples, then 8 test images' reconstructions."""
    import matplotlib.pyplot as plt
    import torch

    from vaerun.assemble import load_run  # torch and the parts, only where pictures are drawn
    from vaerun.pictures import reconstructions, samples

    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 1.2 * len(groups) + 0.3), squeeze=False)
    for ax, g in zip(axes[:, 0], groups, strict=True):
        ax.axis("off")
        ax.set_title(g.label, fontsize=8, loc="left")
        ckpt = checkpoint.checkpoint_path(g.runs[0].path)
        if not ckpt.exists():
            continue
        # on the CPU: a GPU run's pictures, on any machine
        _, data, vae, _ = load_run(g.runs[0].path, device="cpu", n_test=8)
        vae.eval()
        s = samples(vae, 8)[:, :32]  # the first row of the 8x8 grid
        rec = reconstructions(vae, data.test[:8])[:, 30:]  # the reconstructions row
        ax.imshow(torch.cat([s, torch.ones(3, 32, 16), rec], 2).permute(1, 2, 0).numpy())
    _savefig(fig, path)
    plt.close(fig)


def report(sweep_dir: Path) -> list[Path]:
    """Write every report file into sweep_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep_dir={sweep_dir} is not a directory; give a multirun directory "
                        "(e.g. outputs/multirun/...)")
    runs = find_runs(sweep_dir)
    if not runs:
        raise UserError(f"sweep_dir={sweep_dir} holds no runs (no metrics.json below it); give "
                        "a directory made by vaerun train -m")
    keys = varying_keys(runs)
    finished = [r for r in runs if r.status == "finished"]
    unfinished = [r for r in runs if r.status != "finished"]
    groups = group_runs(finished, keys)
    metrics = metric_names(groups)
    out = {name: sweep_dir / name for name in ("report.csv", "report.md", "rate_distortion.png",
                                               "sweep.png", "curves.png", "samples.png")}
    write_csv(out["report.csv"], groups, keys, metrics)
    write_markdown(out["report.md"], sweep_dir, groups, keys, metrics, unfinished)
    if groups:
        plot_rate_distortion(out["rate_distortion.png"], groups)
        plot_sweep(out["sweep.png"], groups, keys)
        plot_curves(out["curves.png"], groups)
        plot_samples(out["samples.png"], groups)
    return [p for p in out.values() if p.exists()]
