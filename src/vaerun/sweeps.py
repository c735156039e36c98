"""A sweep read back from disk: its runs (overrides, metrics, status) grouped by the overrides
that vary, seeds pooled. What `vaerun report` tabulates and plots."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaerun.config import free_keys, is_number
from vaerun.errors import UserError
from vaerun.rundir import RunDir

SEED = "trainer.seed"
IGNORED = free_keys()  # keys that never change a result: runs differing only in them are alike


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


def number(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _overrides(rd: RunDir) -> tuple[dict[str, str], str]:
    try:
        items = rd.overrides()
    except UserError:
        return {}, ".hydra/overrides.yaml is unreadable"
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        k = k.lstrip("+~")
        if not k.startswith("hydra") and k not in IGNORED:
            out[k] = v
    return out, ""


def as_float(v: Any) -> Any:
    """A number as a float (one too large for a float: an infinity of its sign), else itself."""
    try:
        return float(v) if is_number(v) else v
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _metrics(rd: RunDir) -> tuple[dict[str, Any], str]:
    """A run's metrics.json as the report reads it: numbers, and strings but for a metric's value
    (test/*, train/*); anything else (a list, a table, null) is left out, as if not recorded."""
    if not rd.file(rd.METRICS).exists():
        return {"status": "not started"}, ""
    try:
        return {k: as_float(v) for k, v in rd.metrics().items() if is_number(v) or (
            isinstance(v, str) and not k.startswith(("test/", "train/")))}, ""
    except UserError as e:
        return {}, f"metrics.json is unreadable: {str(e).split(': ', 1)[-1].split(';')[0]}"


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run below sweep_dir: each folder that carries vaerun's run marker."""
    runs = []
    for d in sorted({p.parent for p in Path(sweep_dir).rglob(RunDir.MARKER)}):
        rd = RunDir(d)
        if rd.kind() == "run":
            overrides, bad_overrides = _overrides(rd)
            metrics, bad_metrics = _metrics(rd)
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
