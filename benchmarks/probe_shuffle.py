"""Cost of the linear probe's batch stream (``probes/stream.epoch_batches``) on a class-sorted memmap: seconds
per epoch of data alone (gather, float32, batches; no head) and distinct classes per mini-batch. Run it once
with this checkout and once with an older one on PYTHONPATH to compare the streams.

    python -m benchmarks.probe_shuffle [--rows 200000 --dim 1280 --classes 1000 --batch 1024 --epochs 2]
The memmap is written to a temporary folder (rows x dim x 2 bytes) and deleted after; pages stay in the
page cache after writing, so this measures a warm cache (a cold one adds random-read time on disk)."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jepa_eval.probes.stream import chunk_rows, epoch_batches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(args.rows, args.dim))
        rng = np.random.default_rng(0)
        for s in range(0, args.rows, 20_000):   # written in pieces: never the whole array in RAM
            x[s:s + 20_000] = rng.standard_normal((min(20_000, args.rows - s), args.dim), dtype=np.float32)
        x.flush()
        del x
        x = np.load(path, mmap_mode="r")
        y = np.repeat(np.arange(args.classes), -(-args.rows // args.classes))[:args.rows]   # class-sorted
        rows = np.arange(args.rows)
        chunk = max(chunk_rows(x), args.batch)
        for epoch in range(args.epochs):
            t, c = time.perf_counter(), time.process_time()
            per_batch, n = [], 0
            for xb, yb in epoch_batches(x, y, rows, args.batch, 0, epoch, chunk, torch.device("cpu")):
                per_batch.append(len(np.unique(yb.numpy())))
                n += len(xb)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            print(f"epoch {epoch}: {n} rows, {wall:.2f} s wall, {cpu:.2f} s CPU; classes per batch of "
                  f"{args.batch}: mean {np.mean(per_batch):.1f}, min {min(per_batch)} "
                  f"(chunk {chunk} rows; load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
