#!/usr/bin/env python3
"""Sample quality's floors (docs/evaluation.md): the Fréchet distance, in the shipped
classifier's features, to the 10,000 bundled MNIST test images of the test images themselves,
of the training images (all 60,000, and the first 10,000), of uniform noise, and of the test
set's last 5,000 images to its first 5,000.

    python scripts/quality_floors.py
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import torch

from vaerun import quality
from vaerun.data import read_idx


def bundled(name: str) -> torch.Tensor:
    path = Path(str(resources.files("vaerun.bundled") / "mnist" / f"{name}.gz"))
    return torch.from_numpy(read_idx(path, None, "reinstall vaerun").copy()).float().div(255)


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help
    train = bundled("train-images-idx3-ubyte").reshape(-1, 784)
    test = bundled("t10k-images-idx3-ubyte").reshape(-1, 784)
    noise = torch.rand(10000, 784, generator=torch.Generator().manual_seed(0))
    metric = quality.fid_metric("test", test)
    for name, images in [("the test images themselves", test), ("the 60,000 training images", train),
                         ("the first 10,000 training images", train[:10000]),
                         ("uniform noise (10,000)", noise)]:
        fid, entropy = quality.frechet(metric, images)
        print(f"{name:36} FID {fid:8.2f}   class entropy {entropy:.3f} nats")
    halves = quality.fid_metric("first half", test[:5000])
    print(f"{'test images 5001-10000 vs 1-5000':36} FID {quality.frechet(halves, test[5000:])[0]:8.2f}")


if __name__ == "__main__":
    main()
