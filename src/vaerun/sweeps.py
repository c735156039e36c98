"""A sweep read back from disk: its runs (overrides, metrics, status) grouped by the overrides
that vary, seeds pooled. What `vaerun report` tabulates and plots."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaerun.atomic import read_json

SEED = "trainer.seed"
IGNORED = ("trainer.resume", "trainer.device", "trainer.threads", "trainer.progress_seconds")


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]
    problem: str = ""  # what is wrong with its files, if anything

    @property
    def status(self) -> str:
        if self.problem:
            return self.problem
        return str(self.metrics.get("status", "unknown"))


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]  # the varying overrides (seed excluded)
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key if v != "-") or "all runs"

    def get(self, key: str) -> str | None:
        return dict(self.key).get(key)

    def values(self, metric: str) -> list[float]:
        vals = [r.metrics.get(metric) for r in self.runs]
        return [v for v in vals if is_number(v) and math.isfinite(v)]

    def mean_std(self, metric: str) -> tuple[float, float]:
        v = self.values(metric)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan

    def first(self, key: str) -> Any:
        """The first value of a metrics.json entry among the runs (e.g. a string field)."""
        return next((r.metrics[key] for r in self.runs if key in r.metrics), None)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _overrides(run_dir: Path) -> tuple[dict[str, str], str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}, ""
    try:
        items = yaml.safe_load(path.read_text())
        if items is not None and not isinstance(items, list):
            raise ValueError("not a list")
    except (yaml.YAMLError, ValueError, OSError, UnicodeDecodeError) as e:
        return {}, f".hydra/overrides.yaml is unreadable ({type(e).__name__})"
    out = {}
    for item in items or []:
        k, _, v = str(item).partition("=")
        k = k.lstrip("+~")
        if not k.startswith("hydra") and k not in IGNORED:
            out[k] = v
    return out, ""


def _metrics(run_dir: Path) -> tuple[dict[str, Any], str]:
    path = run_dir / "metrics.json"
    if not path.exists():
        return {"status": "not started"}, ""
    try:
        metrics = read_json(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        return {}, f"metrics.json is unreadable ({type(e).__name__})"
    if not isinstance(metrics, dict):
        return {}, f"metrics.json holds a {type(metrics).__name__}, not a record of a run"
    return metrics, ""


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run directory under sweep_dir: one holding metrics.json or .hydra/overrides.yaml."""
    dirs = {p.parent for p in sweep_dir.rglob("metrics.json")}
    dirs |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    runs = []
    for d in sorted(dirs):
        if d == sweep_dir and len(dirs) > 1:
            continue
        overrides, bad_overrides = _overrides(d)
        metrics, bad_metrics = _metrics(d)
        runs.append(Run(d, overrides, metrics, bad_metrics or bad_overrides))
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
    n = number(v)
    return (0, n, "") if n is not None else (1, 0.0, v)


def swept_numeric_key(groups: list[Group], keys: list[str]) -> str | None:
    """The first varying key whose values are numbers (the x axis of a sweep plot)."""
    for k in keys:
        if k == SEED:
            continue
        nums = {number(g.get(k)) for g in groups} - {None}
        if len(nums) > 1:
            return k
    return None
