"""`vaerun report sweep_dir=PATH`: the answer to a sweep as a table and a few plots.

Reads every run under PATH (its metrics.json, .hydra/overrides.yaml, TensorBoard events,
kl_per_dim.json and images/: files its evaluation wrote; it builds no model), groups the runs
that differ only in `trainer.seed`, and writes into PATH:
report.csv and report.md (mean ± std over seeds of every test metric, n), and the figures of
vaerun.plots: rate_distortion.png, sweep.png, curves.png, samples.png, and where the runs have
them bits_per_dim.png, kl_per_dim.png and quality.png (bits/dim against fid_mean). Every file
is made in memory first, so a run that cannot be read leaves no half-written report.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from vaerun.errors import UserError
from vaerun.rundir import RunDir
from vaerun.sweeps import SEED, Group, Run, find_runs, group_runs, is_number, varying_keys

FIRST = ["test/loss", "test/elbo", "test/log_px_z", "test/kl", "test/mse", "test/bce",
         "test/nll_iwae", "test/nll_exact", "test/bits_per_dim", "test/bits_per_dim_elbo",
         "test/active_units", "test/sigma", "test/sigma_optimal", "test/fid_mean",
         "test/fid_sample", "test/fid_recon", "test/sample_class_entropy"]
UNITS = {"mse": "per pixel", "sigma": "", "sigma_optimal": "", "bits_per_dim": "bits/dim",
         "bits_per_dim_elbo": "bits/dim", "active_units": "count", "iwae_k": "samples",
         "quality_images": "images",
         "ppca_active_units": "count", "ppca_sigma": "", "sigma_geomean": "",
         "sigma_optimal_geomean": "", "iwae_seconds": "s", "quality_seconds": "s",
         "nll_exact": "nats", "fid_mean": "", "fid_sample": "", "fid_recon": "",
         "implied_sigma": "", "implied_beta": "",
         "sigma_calibrated": "", "bits_per_dim_calibrated": "bits/dim",
         "bits_per_dim_elbo_calibrated": "bits/dim"}


def metric_names(groups: list[Group]) -> list[str]:
    names = {k for g in groups for r in g.runs for k, v in r.metrics.items()
             if k.startswith("test/") and is_number(v)}
    first = [m for m in FIRST if m in names]
    return first + sorted(names - set(first))


def constant_metrics(groups: list[Group], metrics: list[str]) -> dict[str, float]:
    """Metrics with one value in every run (iwae_k, a fixed sigma, ...), for a line of their own."""
    out = {}
    for m in metrics:
        vals = {v for g in groups for v in g.values(m)}
        if len(vals) == 1 and all(len(g.values(m)) == len(g.runs) for g in groups):
            out[m] = vals.pop()
    return out


def csv_text(groups: list[Group], keys: list[str], metrics: list[str]) -> str:
    cols = [k for k in keys if k != SEED]
    rows = [[*cols, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]]
    for g in groups:
        row: list[Any] = [v for _, v in g.key] + [len(g.runs)]
        for m in metrics:
            mean, std = g.mean_std(m)
            row += ["" if math.isnan(mean) else repr(mean), "" if math.isnan(std) else repr(std)]
        rows.append(row)
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _cell(g: Group, m: str) -> str:
    mean, std = g.mean_std(m)
    if math.isnan(mean):  # no finite value: none, or one too large for a float
        return "overflow" if any(is_number(r.metrics.get(m)) for r in g.runs) else "—"
    return f"{mean:.4g}" if math.isnan(std) or std == 0 else f"{mean:.4g} ± {std:.2g}"


def row(cells: list[str]) -> str:
    """A markdown table row, a `|` inside a cell escaped (an override may hold one)."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _unit(metric: str) -> str:
    short = metric.split("/", 1)[1]
    return f"{short} ({UNITS.get(short, 'nats')})".replace(" ()", "")


HEADLINE = ["test/elbo", "test/nll_iwae", "test/bits_per_dim", "test/kl", "test/active_units",
            "test/mse", "test/implied_sigma", "test/implied_beta", "test/fid_mean"]


def table(groups: list[Group], cols: list[str], metrics: list[str]) -> list[str]:
    lines = [row(cols + ["n"] + [_unit(m) for m in metrics]), "|" + " --- |" * (len(cols) + 1
                                                                             + len(metrics))]
    return lines + [row([v for _, v in g.key] + [str(len(g.runs))] + [_cell(g, m) for m in metrics])
                    for g in groups]


SETTINGS = {  # what a metric was measured with, recorded beside it: its values must agree
    "test/iwae_k": ("eval.iwae_k", "The IWAE bounds (nll_iwae and the bits/dim from it)",
                    "importance samples", "a bound tightens as k grows"),
    "test/quality_images": ("eval.quality_images", "The Fréchet distances (fid_*)", "images",
                            "a Fréchet distance falls as the number of images grows")}


def mixed_settings(groups: list[Group]) -> list[str]:
    """A line for each measurement setting whose value differs among the runs (`vaerun eval`
    with eval.iwae_k=5000 on some of them): their numbers are not comparable."""
    lines = []
    for metric, (key, what, unit, why) in SETTINGS.items():
        used = Counter(v for g in groups for v in g.values(metric))
        if len(used) < 2:
            continue
        within = [g.label for g in groups if len(set(g.values(metric))) > 1]
        counts = ", ".join(f"{v:g} in {n} run{'s' * (n > 1)}" for v, n in sorted(used.items()))
        lines += ["", f"{what} were measured with different numbers of {unit}, {key} = {counts}: "
                  f"{why}, so compare runs of one value" + (
                      f"; the means of {'; '.join(within)} mix them" if within else "") +
                  f" (`vaerun eval run_dir=RUN {key}=N` measures a run again)."]
    return lines


def repeats(g: Group) -> dict[Any, int]:
    """The seeds (as each run recorded it) that more than one run of the group has."""
    seeds = Counter(s for r in g.runs if is_number(s := r.metrics.get("seed")) and math.isfinite(s))
    return {s: n for s, n in seeds.items() if n > 1}


def _why(r: Run) -> str:
    """What an unfinished run's record says of it: its error, or where it stopped. A process
    killed without warning (SIGKILL, the OOM killer, a node lost) leaves `running` behind."""
    epoch, step = r.metrics.get("epoch"), r.metrics.get("step")
    if r.metrics.get("error") or r.status not in ("running", "interrupted") or not (
            is_number(epoch) and is_number(step)):
        return f": {r.metrics['error']}" if r.metrics.get("error") else ""
    when = datetime.fromtimestamp(r.path.joinpath(RunDir.METRICS).stat().st_mtime)
    still = (f" (recorded {when:%Y-%m-%d %H:%M}): still running, or killed without warning"
             if r.status == "running" else "")
    return (f" after {int(epoch)} whole epochs, step {int(step)}{still}; continue it with "
            "trainer.resume=true")


def markdown_text(sweep_dir: Path, groups: list[Group], keys: list[str], metrics: list[str],
                  unfinished: list[Run]) -> str:
    """What a user compares first (HEADLINE, where the runs have it), then every metric."""
    cols = [k for k in keys if k != SEED]
    constant = constant_metrics(groups, metrics) if len(groups) > 1 else {}
    shown = [m for m in metrics if m not in constant]
    lines = [f"# Sweep report: {sweep_dir}", "",
             "Final test metrics, mean ± std over seeds (± where the seeds differ); nats per "
             "image unless marked. Every metric of every group: below, and in report.csv." + (
                 " A `-`: the key was not on that run's command line (its default, or what its "
                 "recipe or experiment sets)." if any(v == "-" for g in groups for _, v in g.key)
                 else ""), ""]

    def same(names: list[str]) -> list[str]:  # a line for the metrics with one value in all
        return ["The same in every run: " + ", ".join(
            f"{_unit(m)} = {constant[m]:.4g}" for m in names) + ".", ""] if names else []

    lines += same([m for m in constant if m in HEADLINE])
    lines += table(groups, cols, [m for m in HEADLINE if m in shown])
    lines += mixed_settings(groups)
    if repeated := [f"{g.label} ({', '.join(f'seed {int(s)} {n} times' for s, n in c.items())})"
                    for g in groups if (c := repeats(g))]:
        lines += ["", "Runs of the same seed are repeats of one run, not seeds: n counts each, "
                  f"and the ± is not a spread over seeds, in {'; '.join(repeated)}."]
    lines += ["", "<details><summary>All metrics</summary>", "",
              *same([m for m in constant if m not in HEADLINE]), *table(groups, cols, shown), "",
              "</details>", "", "## Unfinished or failed runs", ""]
    for r in unfinished:
        lines.append(f"- `{r.path.relative_to(sweep_dir)}` — {r.status}{_why(r)}")
    if not unfinished:
        lines.append("None: every run finished.")
    return "\n".join(lines) + "\n"


FIGURES = ("rate_distortion.png", "sweep.png", "curves.png", "samples.png", "bits_per_dim.png",
           "kl_per_dim.png", "quality.png")  # each a report may draw


def figures(groups: list[Group], keys: list[str], poll: Any = lambda: None) -> dict[str, bytes]:
    """The report's figures. Their labels are the runs' recorded values, drawn as plain text:
    matplotlib would read two `$` in one as TeX (a value `$a$_^` failed the whole report), so
    each `$` of them is escaped; the axes' own labels (10² on a log axis) stay TeX."""
    from vaerun import plots  # matplotlib: loaded only once there is a report to draw

    plain = lambda s: str(s).replace("$", "\\$")  # noqa: E731
    groups = [Group(tuple((plain(k), plain(v)) for k, v in g.key), g.runs) for g in groups]
    keys = [plain(k) for k in keys]
    todo = {"rate_distortion.png": lambda: plots.rate_distortion(groups),
            "sweep.png": lambda: plots.sweep(groups, keys),
            "curves.png": lambda: plots.curves(groups), "samples.png": lambda: plots.samples(groups)}
    if any(g.values("test/bits_per_dim") for g in groups):
        todo["bits_per_dim.png"] = lambda: plots.bits_per_dim(groups)
    if any(g.values("test/ppca_kl") for g in groups):
        todo["kl_per_dim.png"] = lambda: plots.kl_per_dim(groups)
    if any(g.values("test/fid_mean") and g.values("test/bits_per_dim") for g in groups):
        todo["quality.png"] = lambda: plots.quality(groups)
    out = {}
    for name, draw in todo.items():  # a second each for a large sweep: a stop is polled
        poll()
        out[name] = draw()
    return out


def report(rd: RunDir, out: RunDir | None = None, poll: Any = lambda: None) -> list[Path]:
    """Write every report file into the sweep's folder (one vaerun made), or into `out` (a new
    folder, or one of vaerun's reports); their paths. `poll` raises to stop (before any is
    written)."""
    where = rd.given
    if not rd.path.is_dir():
        raise UserError(f"sweep_dir={where} is not a directory; give a multirun directory "
                        "(e.g. outputs/multirun/...)")
    runs = find_runs(rd.path)
    if not runs:
        raise UserError(f"sweep_dir={where} holds no runs (no vaerun run below it); give a "
                        "directory made by vaerun train -m")
    if out is None and rd.kind() not in ("sweep", "run"):
        raise UserError(f"sweep_dir={where} is not a folder vaerun made (no .vaerun marker), and a "
                        "report writes only into vaerun's own; give the sweep's folder itself, or "
                        "out=DIR, a new folder for the report (vaerun.report(..., out=DIR))")
    rd.check_links("sweep_dir")
    if out is not None:
        out.check_place("out", "report")
    keys = varying_keys([r for r in runs if not r.problem])
    finished = [r for r in runs if r.status == "finished"]
    groups = group_runs(finished, keys)
    metrics = metric_names(groups)
    files: dict[str, bytes] = {
        "report.csv": csv_text(groups, keys, metrics).encode(),
        "report.md": markdown_text(rd.path, groups, keys, metrics,
                                   [r for r in runs if r.status != "finished"]).encode()}
    if groups:
        files.update(figures(groups, keys, poll))
    poll()
    if out is not None:
        out.mark("report")
    for name in set(FIGURES) - set(files):  # an earlier report's, which this one has not drawn
        (out or rd).file(name).unlink(missing_ok=True)
    return [(out or rd).write(name, data) for name, data in files.items()]  # all made: written
