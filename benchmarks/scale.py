"""ImageNet-sized features: k-NN and the linear head grid on a 1.28 M x 1280 float16 memory map (3.3 GB)
with 50 k test rows, each phase in its own process so that its peak RSS is its own. CPU time is
bounded by running a scaled-down query set / a few optimizer steps and extrapolating linearly:

    k-NN:   t(50k) = t_build + t_search(q) * 50_000 / q   (brute force: search cost is linear in queries)
    heads:  t(epoch) = t_step * ceil(1_281_167 * 0.9 / 256)  (0.9: the rest is the selection hold-out)

    python -m benchmarks.scale [--queries 2000 --steps 5 --dir /tmp]   (creates and deletes the memmap)"""
from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import peak_rss_gib, say, table, update_results
from jepa_eval.probes.knn import choose_knn_backend, knn_eval_streaming

N_TRAIN, N_TEST, DIM, CLASSES = 1_281_167, 50_000, 1280, 1000


def make_memmap(path: Path, n: int, dim: int, n_classes: int, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """Clustered float16 features written chunk by chunk (never all in RAM); returns the labels."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, dim), dtype=np.float32) * (3 / math.sqrt(dim))
    y = rng.integers(0, n_classes, n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, chunk):
        yy = y[s:s + chunk]
        out[s:s + chunk] = centers[yy] + rng.standard_normal((len(yy), dim), dtype=np.float32) * (4 / math.sqrt(dim))
    out.flush()
    del out
    return y


class _TimedIndex:
    """Wraps the FAISS index that ``knn_eval`` builds so that building and searching are timed apart."""

    def __init__(self, index, times: dict) -> None:
        self.index, self.times = index, times

    def add(self, x):
        t = time.perf_counter()
        self.index.add(x)
        self.times["add"] = self.times.get("add", 0.0) + time.perf_counter() - t

    def search(self, x, k):
        t = time.perf_counter()
        out = self.index.search(x, k)
        self.times["search"] = self.times.get("search", 0.0) + time.perf_counter() - t
        return out


def phase_knn(feats: str, labels: str, queries: int, method: str) -> dict:
    import jepa_eval.probes.knn as knn_mod
    x, y = np.load(feats, mmap_mode="r"), np.load(labels)
    qx, qy = np.array(x[:queries]), y[:queries]            # queries: rows of the same distribution
    times: dict = {}
    if method == "knn_eval":
        make = knn_mod._gpu_index
        knn_mod._gpu_index = lambda dim: (_TimedIndex(make(dim)[0], times), None)
    t = time.perf_counter()
    if method == "knn_eval":   # the FAISS path itself: "auto" would stream a training set this large
        acc = knn_mod.knn_eval(x, y, qx, qy, ks=(20,), backend="faiss")[20]
    else:
        acc = knn_eval_streaming(x, y, qx, qy, ks=(20,))[20]
    total = time.perf_counter() - t
    if method == "knn_eval":   # build (normalize + add) is paid once; search scales with the queries
        est = total - times["search"] + times["search"] * N_TEST / queries
    else:                      # streaming re-reads nothing per query: the whole pass scales with queries
        est = total * N_TEST / queries
    return {"seconds": total, **{f"seconds_{k}": v for k, v in times.items()}, "top1_self_included": acc,
            "est_seconds_50k": est, "peak_rss_gib": peak_rss_gib()}


def phase_heads(feats: str, labels: str, steps: int, single: bool) -> dict:
    import torch
    from jepa_eval.probes.linear import LinearConfig, cached_batches, fit_grid
    from jepa_eval.probes.stream import holdout_split
    x, y = np.load(feats, mmap_mode="r"), np.load(labels)
    cfg = LinearConfig(epochs=1, lrs=[0.01], wds=[0.0], norms=["none"]) if single else LinearConfig(epochs=1)
    fit, _ = holdout_split(y, 0.1, 0)
    stream = cached_batches(x, y, fit, cfg, "cpu")
    first = list(itertools.islice(stream(0), 1))            # first chunk read + first batch: not a step cost
    t = time.perf_counter()
    fit_grid(x.shape[1], CLASSES, lambda e: itertools.chain(first, itertools.islice(stream(0), 1, steps + 1)),
             len(fit), cfg)
    wall = time.perf_counter() - t
    per_epoch = math.ceil(len(fit) / cfg.batch_size)
    return {"heads": len(cfg.heads()), "steps": steps, "seconds": wall, "est_seconds_per_epoch": wall / steps * per_epoch,
            "peak_rss_gib": peak_rss_gib(), "threads": torch.get_num_threads()}


def run(queries: int = 2000, steps: int = 5, root: str | None = None, n_train: int = N_TRAIN,
        methods: tuple[str, ...] = ("knn_eval", "streaming"), save: bool = True) -> dict:
    out: dict = {"n_train": n_train, "dim": DIM, "classes": CLASSES, "queries_run": queries, "n_test_target": N_TEST,
                 "extrapolation": __doc__.split("\n\n")[1].strip()}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        feats, labels = str(Path(tmp) / "train.npy"), str(Path(tmp) / "labels.npy")
        t = time.perf_counter()
        np.save(labels, make_memmap(Path(feats), n_train, DIM, CLASSES))
        out["seconds_write_memmap"] = time.perf_counter() - t
        out["memmap_gb"] = Path(feats).stat().st_size / 1e9
        say(f"  wrote {out['memmap_gb']:.2f} GB memmap in {out['seconds_write_memmap']:.0f} s")
        out["knn_eval_auto_backend"] = choose_knn_backend(n_train, DIM)   # what knn_eval picks here by itself
        say(f"  knn_eval(backend='auto') would take {out['knn_eval_auto_backend'][0]}: "
            f"{out['knn_eval_auto_backend'][1]}")
        jobs = [(f"k-NN {m}", phase_knn, (feats, labels, queries, m)) for m in methods]
        jobs += [("head grid (36 heads)", phase_heads, (feats, labels, steps, False)),
                 ("one head", phase_heads, (feats, labels, steps, True))]
        for name, fn, args in jobs:
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                out[name] = pool.submit(fn, *args).result()
            say(f"  {name}: {out[name]}")
    rows = [[n, out[n]["seconds"], out[n]["peak_rss_gib"],
             out[n].get("est_seconds_50k", out[n].get("est_seconds_per_epoch")) / 3600] for n, _, _ in jobs]
    table(f"ImageNet-sized float16 memmap {n_train} x {DIM} ({out['memmap_gb']:.1f} GB); k-NN with {queries} "
          f"queries, heads {steps} steps of 256", ["phase", "seconds run", "peak RSS GiB",
                                                   "est. h (50k queries / 1 epoch)"], rows)
    out["max_peak_rss_gib"] = max(out[n]["peak_rss_gib"] for n, _, _ in jobs)
    out["within_24_gib"] = out["max_peak_rss_gib"] < 24
    if save:
        update_results("scale", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--train", type=int, default=N_TRAIN, help="rows of the memmap (smaller for a dry run)")
    ap.add_argument("--dir", default=None, help="where the temporary memmap goes (default: the temp dir)")
    ap.add_argument("--only-streaming", action="store_true", help="skip knn_eval's in-RAM float32 index")
    a = ap.parse_args(argv)
    return run(a.queries, a.steps, a.dir, a.train, ("streaming",) if a.only_streaming else ("knn_eval", "streaming"))


if __name__ == "__main__":
    main()
