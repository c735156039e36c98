#!/usr/bin/env python3
"""Train the MNIST classifier whose features score sample quality (vaerun.quality), on the
bundled training set, with a fixed seed, and write its weights into the source tree
(src/vaerun/bundled/classifier/lenet.pt) with their SHA-256 and test accuracy:

    python scripts/train_classifier.py [--epochs 10] [--out src/vaerun/bundled/classifier]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from vaerun.data import read_idx
from vaerun.quality import Classifier


def bundled(name: str) -> torch.Tensor:
    path = Path(str(resources.files("vaerun.bundled") / "mnist" / f"{name}.gz"))
    return torch.from_numpy(read_idx(path, None, "reinstall vaerun").copy())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("src/vaerun/bundled/classifier"))
    a = p.parse_args()
    torch.manual_seed(a.seed)
    x = bundled("train-images-idx3-ubyte").float().div_(255).reshape(-1, 784)
    y = bundled("train-labels-idx1-ubyte").long()
    xt = bundled("t10k-images-idx3-ubyte").float().div_(255).reshape(-1, 784)
    yt = bundled("t10k-labels-idx1-ubyte").long()
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=a.epochs * 469)
    gen = torch.Generator().manual_seed(a.seed)
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(xt[i: i + 1000]).argmax(-1) == yt[i: i + 1000]).sum().item()
                      for i in range(0, len(xt), 1000)) / len(xt)
        print(f"epoch {epoch + 1}/{a.epochs}: test accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    blob = buf.getvalue()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "lenet.pt").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    record = {"test_accuracy": acc, "sha256": digest, "epochs": a.epochs, "seed": a.seed,
              "bytes": len(blob), "torch": torch.__version__,
              "command": " ".join(["python", *sys.argv])}
    (a.out / "lenet.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {a.out / 'lenet.pt'} ({len(blob)} bytes, sha256 {digest}); test accuracy {acc:.4f}")
    return 0 if acc >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
