"""The figures of `vaerun report`, each returned as PNG bytes (the report writes them all at
once, only when every one of them was drawn)."""

from __future__ import annotations

import io
import logging
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

import matplotlib.ticker as mticker
from matplotlib.figure import Figure  # not pyplot: a notebook's own backend stays as it is

from vaerun.rundir import read_json
from vaerun.sweeps import Group, is_number, number, swept_numeric_key

SWEEP_METRICS = ["test/elbo", "test/kl", "test/active_units", "test/mse", "test/sigma_optimal",
                 "test/nll_iwae", "test/bits_per_dim"]
PREDICTIONS = {"test/kl": "test/ppca_kl", "test/active_units": "test/ppca_active_units"}
DATA_NAMES = {"8bit": "8-bit grey levels", "continuous": "dequantised 8-bit",
              "binary": "binarised"}


def subplots(*layout: int, figsize: tuple[float, float], squeeze: bool = True) -> tuple:
    """A figure of its own (no pyplot: no backend chosen, nothing kept) and its axes."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*layout, squeeze=squeeze)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def look(i: int) -> dict[str, str]:
    """Group i's colour and marker: ten colours, then the next marker, so that no two of a
    hundred groups look alike."""
    return {"color": f"C{i % 10}", "marker": "osv^D<>ph*"[i // 10 % 10]}


def legend(ax, **where: Any) -> None:
    """The axes' legend, if it has entries: where asked while it is short, beside the axes once
    it has more than 12 (inside, it would cover the points)."""
    n = len(ax.get_legend_handles_labels()[0])
    if n > 12:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
                  ncol=1 + (n - 1) // 40)
    elif n:  # (no legend of nothing: matplotlib would warn)
        ax.legend(fontsize=7, **where)


def log_axis(ax, which: str, values: list[float]) -> None:
    """A log x or y axis when the values span a decade or more, labels on the majors only (on a
    narrower span minor labels overprint each other)."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) >= 10:
        getattr(ax, f"set_{which}scale")("log")
        getattr(ax, f"{which}axis").set_minor_formatter(mticker.NullFormatter())


def rate_distortion(groups: list[Group]) -> bytes:
    fig, ax = subplots(figsize=(6.5, 4.5))
    xs = []
    for i, g in enumerate(groups):
        pts = [(r.metrics.get("test/mse"), r.metrics.get("test/kl")) for r in g.runs]
        pts = [p for p in pts if None not in p]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=g.label, s=25, **look(i))
            xs += [p[0] for p in pts]
    ax.set_xlabel("distortion: test/mse (per pixel)")
    ax.set_ylabel("rate: test/kl (nats per image)")
    log_axis(ax, "x", xs)
    ax.set_title("rate against distortion, one point per run")
    legend(ax, loc="best")
    return png(fig)


def _series(groups: list[Group], x_key: str | None) -> tuple[dict[str, list[Group]], list[Group]]:
    """Groups with a numeric x_key, by the rest of their key; and the others (references)."""
    series: dict[str, list[Group]] = {}
    refs: list[Group] = []
    for g in groups:
        if x_key is not None and number(g.get(x_key)) is not None:
            rest = ", ".join(f"{k}={v}" for k, v in g.key if k != x_key and v != "-")
            series.setdefault(rest, []).append(g)
        else:
            refs.append(g)
    return series, refs


def _sweep_panel(ax, m: str, series: dict[str, list[Group]], refs: list[Group],
                 x_key: str) -> None:
    for i, (label, gs) in enumerate(series.items()):
        for metric, predicted in ((m, False), (PREDICTIONS.get(m), True)):
            if metric is None:
                continue
            pts = sorted((number(g.get(x_key)), *g.mean_std(metric)) for g in gs)
            pts = [(x, y, 0 if math.isnan(e) else e) for x, y, e in pts if not math.isnan(y)]
            if not pts:
                continue
            x, y, e = zip(*pts, strict=True)
            if predicted:  # a function of sigma and the data alone: one black dashed line
                ax.plot(x, y, "k--", lw=1, label="pPCA's prediction at this sigma")
            else:
                ax.errorbar(x, y, yerr=e, ms=3, capsize=2, **look(i),
                            label=f"measured ({label})" if label else "measured, mean ± std")
    for j, g in enumerate(refs):
        mean, _ = g.mean_std(m)
        if not math.isnan(mean):
            ax.axhline(mean, ls=":", lw=1, color=f"C{(j + len(series)) % 10}", label=g.label)
    ax.set_title(m, fontsize=9)


def sweep(groups: list[Group], keys: list[str]) -> bytes:
    """The final test metrics against the swept number; dashed: pPCA's prediction where the
    runs have one (KL, active units); dotted: groups without the swept key."""
    x_key = swept_numeric_key(groups, keys)
    metrics = [m for m in SWEEP_METRICS if any(g.values(m) for g in groups)]
    cols = max(1, len(metrics))
    fig, axes = subplots(1, cols, figsize=(3.3 * cols, 3.4), squeeze=False)
    series, refs = _series(groups, x_key)
    xs = [number(g.get(x_key)) for gs in series.values() for g in gs] if x_key else []
    for ax, m in zip(axes[0], metrics, strict=False):
        _sweep_panel(ax, m, series, refs, x_key or "")
        if x_key:
            ax.set_xlabel(x_key)
            log_axis(ax, "x", xs)
        if m == "test/kl":
            log_axis(ax, "y", [v for g in groups for v in g.values(m)])
        if m == "test/elbo" and xs and max(xs) / max(min(xs), 1e-12) >= 10:
            ax.set_yscale("symlog", linthresh=100)
    handles, labels = [], []
    for ax in axes[0]:  # every label once, whichever panel has it
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle("final test metrics (mean ± std over seeds; dashed: pPCA's prediction at the "
                 "same sigma; dotted: runs without the swept key)", fontsize=9)
    fig.tight_layout()
    if handles:  # below the panels and their labels, however many rows it takes
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, 0))
    return png(fig)


def curves(groups: list[Group]) -> bytes:
    """-ELBO (nats per image) against the step: the training points (thin) and the test set's
    after each epoch (markers), seeds averaged; a run of one epoch still draws a curve."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (fig, ax), said = subplots(figsize=(6.5, 4.5)), logging.getLogger("tensorboard")
    for i, g in enumerate(groups):
        train, test = {"lw": 0.8, "alpha": 0.6, "color": look(i)["color"]}, {"ms": 3, **look(i)}
        accs, level = [], said.level
        said.setLevel(logging.ERROR)  # a resumed run's points past its checkpoint are dropped
        try:  # (purge_step), as expected: not TensorBoard's "likely a TensorFlow restart"
            for r in g.runs:
                accs.append(EventAccumulator(str(r.path), size_guidance={"scalars": 0}))
                accs[-1].Reload()
        finally:
            said.setLevel(level)
        for split, style in (("train", train), ("test", test)):
            runs = [[(e.step, -e.value) for e in acc.Scalars(f"{split}/elbo")] for acc in accs
                    if f"{split}/elbo" in acc.Tags()["scalars"]]
            n = min((len(c) for c in runs), default=0)
            if n:
                ax.plot([runs[0][j][0] for j in range(n)],
                        [statistics.fmean(c[j][1] for c in runs) for j in range(n)],
                        label=f"{g.label} ({split})", **style)
    ax.set_xlabel("optimizer step")
    ax.set_xlim(left=0)
    ax.set_ylabel("-ELBO (nats per image)")
    ax.set_yscale("symlog", linthresh=100)
    legend(ax)
    return png(fig)


def bits_per_dim(groups: list[Group]) -> bytes:
    """One bar per group: bits per dimension from the IWAE bound, with the ELBO's looser bound
    as a hollow bar behind it, labelled with the data each was measured on."""
    rows = [(g, g.mean_std("test/bits_per_dim"), g.mean_std("test/bits_per_dim_elbo"))
            for g in groups if g.values("test/bits_per_dim")]
    rows.sort(key=lambda r: r[1][0])
    fig, ax = subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    y = list(range(len(rows)))
    elbo = [e[0] for _, _, e in rows]
    iwae = [b[0] for _, b, _ in rows]
    ax.barh(y, elbo, color="none", edgecolor="grey", label="from the ELBO (−elbo)")
    k = rows[0][0].first("test/iwae_k") if rows else None
    ax.barh(y, iwae, xerr=[0 if math.isnan(b[1]) else b[1] for _, b, _ in rows], color="C0",
            alpha=0.8, capsize=2, label=f"from IWAE (k = {k:g})" if k is not None else "from IWAE")
    ax.set_yticks(y, [f"{g.label}\n({DATA_NAMES.get(g.first('bits_per_dim_data'), '?')})"
                      for g, _, _ in rows], fontsize=7)
    for yi, v in zip(y, iwae, strict=True):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
    if any(g.first("bits_per_dim_data") in ("8bit", "continuous") for g, _, _ in rows):
        ax.axvline(1.0, ls=":", color="k", lw=1, label="flows on MNIST, about 1.0")
    ax.set_xlabel("bits per dimension of the test images (lower is better; upper bounds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def quality(groups: list[Group]) -> bytes:
    """The two axes, one point per group: bits/dim (likelihood) against the Fréchet distance
    of its decoder means of z ~ p(z) (sample quality), labelled, with ± over seeds."""
    fig, ax = subplots(figsize=(11, 5))
    for i, g in enumerate(groups):
        (x, ex), (y, ey) = g.mean_std("test/fid_mean"), g.mean_std("test/bits_per_dim")
        if math.isnan(x) or math.isnan(y):
            continue
        label = "\n".join(textwrap.wrap(f"{i + 1}: {g.label}", 48))
        ax.errorbar(x, y, xerr=0 if math.isnan(ex) else ex, yerr=0 if math.isnan(ey) else ey,
                    ms=5, capsize=2, label=label, **look(i))
        ax.annotate(str(i + 1), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    ax.set_xlabel("sample quality: test/fid_mean (Fréchet distance of decoder means of z ~ p(z), "
                  "lower is better)", fontsize=8)
    ax.set_ylabel("likelihood: test/bits_per_dim (lower is better)", fontsize=8)
    ax.set_title("the two axes, one point per group", fontsize=9)
    return png(fig)


def _first_file(g: Group, name: str) -> Path | None:
    """`name` in the group's first run that has it (a run's own file: the report builds no
    model)."""
    return next((r.path / name for r in g.runs if (r.path / name).is_file()), None)


def _picture(path: Path | None):
    from PIL import Image

    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:
        return None


def samples(groups: list[Group]) -> bytes:
    """Per group (its first run that has them): the run's own images/samples.png beside its
    images/reconstructions.png, as its evaluation drew them."""
    from PIL import Image

    fig, axes = subplots(len(groups), 1, figsize=(11, 1.9 * len(groups) + 0.5), squeeze=False)
    for row, (ax, g) in enumerate(zip(axes[:, 0], groups, strict=True)):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(g.label, fontsize=7, rotation=0, ha="right", va="center")
        pics = [_picture(_first_file(g, f"images/{n}.png")) for n in ("samples", "reconstructions")]
        pics = [p for p in pics if p is not None]
        if not pics:
            ax.text(0.01, 0.5, "no images/ in its runs", fontsize=7, va="center",
                    transform=ax.transAxes)
            continue
        h = max(p.height for p in pics)
        sheet = Image.new("RGB", (sum(p.width for p in pics) + 16 * (len(pics) - 1), h), "white")
        x = 0
        for p in pics:
            sheet.paste(p, (x, 0))
            x += p.width + 16
        ax.imshow(sheet)
        if row == 0:
            ax.set_title("left: decoder means of z ~ p(z) (images/samples.png);   right: test "
                         "images above their reconstructions (images/reconstructions.png)",
                         fontsize=8)
    return png(fig)


def _floats(v: Any) -> list[float] | None:
    """A record's list of finite numbers, else None (a record that is not one is not drawn)."""
    ok = isinstance(v, list) and all(is_number(x) and math.isfinite(x) for x in v)
    return [float(x) for x in v] if ok else None


def kl_per_dim(groups: list[Group]) -> bytes:
    """For runs with a pPCA reference: each latent dimension's KL (sorted), measured on the
    test set, against pPCA's ½·log(λ_i/σ²) for λ_i > σ², both read from the run's
    kl_per_dim.json."""
    shown = [g for g in groups if g.values("test/ppca_kl")]
    cols = min(5, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = subplots(rows, cols, figsize=(2.8 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, shown, strict=False):
        path = _first_file(g, "kl_per_dim.json")
        try:
            kl = read_json(path) if path else None
        except (OSError, ValueError):
            kl = None
        measured, ppca = (_floats(kl.get(k)) if isinstance(kl, dict) else None
                          for k in ("measured", "ppca"))
        if not measured:
            ax.text(0.02, 0.5, "no kl_per_dim.json in its runs", fontsize=6, va="center",
                    transform=ax.transAxes, wrap=True)
            continue
        ax.bar(range(len(measured)), sorted(measured, reverse=True), color="C0", label="measured")
        if ppca:
            ax.plot(range(len(ppca)), ppca, "k--", lw=1, label="pPCA: ½ log(λ/σ²)")
        ax.set_title("\n".join(textwrap.wrap(g.label, 36)), fontsize=8)
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.supxlabel("latent dimensions, sorted by KL", fontsize=9)
    fig.supylabel("KL (nats per image)", fontsize=9)
    fig.tight_layout()
    return png(fig)
