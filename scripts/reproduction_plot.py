#!/usr/bin/env python3
"""The IWAE paper's run along its schedule: the test set's −ELBO after every epoch (nats per
image, from the run's TensorBoard events), the 8 stages of 3^i epochs marked, the paper's 86.76
and any IWAE bounds at k = 5,000 measured on the way (`--nll EPOCH=NATS`, repeatable).

    python scripts/reproduction_plot.py docs/reproduction/run --nll 1263=86.90 \\
        --out docs/reproduction/nll_along_stages.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PAPER = 86.76
STEPS_PER_EPOCH = 2980  # 59,600 images in batches of 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--nll", action="append", default=[], help="EPOCH=NATS, an IWAE bound measured")
    p.add_argument("--out", default="nll_along_stages.png")
    a = p.parse_args()
    acc = EventAccumulator(a.run, size_guidance={"scalars": 0})
    acc.Reload()
    by_epoch = {e.step // STEPS_PER_EPOCH: -e.value for e in acc.Scalars("test/elbo")}
    epochs = sorted(by_epoch)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [by_epoch[e] for e in epochs], lw=1, label="test −ELBO, each epoch")
    for i, text in enumerate(a.nll):  # labels alternate below and above: points close on a log axis
        epoch, nats = text.split("=")
        ax.plot(int(epoch), float(nats), "o", color="C1")
        ax.annotate(f"{float(nats):.2f}", (int(epoch), float(nats)), textcoords="offset points",
                    xytext=(-30, -13) if i % 2 == 0 else (-30, 6), color="C1")
    ax.plot([], [], "o", color="C1", label="IWAE bound, k = 5,000")
    ax.axhline(PAPER, color="k", ls="--", lw=0.8, label=f"Burda et al. 2016: {PAPER}")
    end = 0
    for i in range(8):  # stage i: 3^i epochs at 0.001·10^(−i/7)
        end += 3**i
        ax.axvline(end, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(1, 3600)
    ax.set_ylim(PAPER - 2, max(by_epoch[e] for e in epochs if e >= 4) + 1)
    ax.set_xlabel("epoch (grey lines: the ends of the 8 stages)")
    ax.set_ylabel("nats per test image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"{len(epochs)} epochs (last {epochs[-1]}: −ELBO {by_epoch[epochs[-1]]:.2f}) -> {a.out}")


if __name__ == "__main__":
    main()
