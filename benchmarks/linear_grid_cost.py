"""Cost of training the whole linear head grid in one batched model vs a single head, on a memory-mapped
feature file (so the streaming read is part of the cost).

    PYTHONPATH=. python benchmarks/linear_grid_cost.py [--n 5000 --dim 768 --classes 10 --epochs 5]"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jepa_eval.probes.linear import LinearConfig, linear_probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(a.classes, a.dim)) * 0.1
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for split, n in (("train", a.n), ("test", a.n // 5)):
            y = rng.integers(0, a.classes, n)
            np.save(Path(tmp) / f"{split}.npy", (centers[y] + rng.normal(size=(n, a.dim))).astype(np.float16))
            sets[split] = (np.load(Path(tmp) / f"{split}.npy", mmap_mode="r"), y)
        data = {"f": (*sets["train"], *sets["test"])}
        grid = LinearConfig(epochs=a.epochs)
        one = LinearConfig(epochs=a.epochs, lrs=[0.01], wds=[0.0], norms=["bn"])
        times = {}
        for name, cfg in (("one head", one), (f"{len(grid.heads())} heads", grid)):
            t = time.perf_counter()
            res = linear_probe(data, cfg)
            times[name] = time.perf_counter() - t
            print(f"{name:>9}: {times[name]:6.2f}s  test top-1 {res.top1:.1f}  chosen {res.chosen}")
        (t1, tg) = times.values()
        print(f"grid/one = {tg / t1:.2f}x for {len(grid.heads())}x the heads "
              f"[n {a.n}, dim {a.dim}, classes {a.classes}, {a.epochs} epochs, {a.threads} threads]")


if __name__ == "__main__":
    main()
