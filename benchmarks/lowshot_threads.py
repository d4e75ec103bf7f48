"""Low-shot sweep, 1 vs 2 (or --threads) torch threads: the evidence behind ``lowshot_threads``.

Part 1 times a few L-BFGS iterations of ``fit_logreg_path`` (the batched objective of ``lowshot_eval``)
on problems from Fashion-MNIST size (10 classes x 12 shots, dim 384) to ImageNet size (1000 x 12, dim
1280), alternating the thread counts and keeping the best of ``--repeats``. Part 2 runs the whole
``lowshot_eval`` (21 lambdas, 3 folds) at the small sizes with each thread count and checks that both
pick the same lambdas and reach the same top-1. Work = subsets x (folds + 1) x labelled rows x dim x
classes, the multiply-adds of one logits matmul; ``ONE_THREAD_BELOW`` is the rule's threshold on it.

    python -m benchmarks.lowshot_threads [--quick] [--threads 1 2] [--repeats 3]"""
from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks._common import say, table, update_results
from benchmarks.knn_speed import clustered
from jepa_eval.probes.lowshot import (DEFAULT_LAMBDAS, ONE_THREAD_BELOW, fit_logreg_path, k_per_class_subset,
                                      lowshot_eval, lowshot_threads)

# (subsets, classes, shots per class, dim): the sizes asked about, smallest first
PATH_SIZES = [(3, 10, 12, 384), (2, 40, 13, 256), (3, 50, 12, 384), (3, 100, 12, 384), (3, 100, 12, 1280),
              (3, 200, 12, 768), (3, 200, 12, 1280), (1, 1000, 12, 1280)]
QUICK_PATH_SIZES = PATH_SIZES[:6]
EVAL_SIZES = [(3, 10, 12, 384), (2, 40, 13, 256)]


def work(subsets: int, classes: int, shots: int, dim: int, folds: int = 3) -> int:
    return subsets * (folds + 1) * classes * shots * dim * classes


def path_seconds(subsets: int, classes: int, shots: int, dim: int, threads: list[int], repeats: int,
                 iters: int = 3, folds: int = 3) -> dict[int, float]:
    """Best wall time of ``iters`` L-BFGS iterations at one lambda, per thread count (alternating order)."""
    g = torch.Generator().manual_seed(0)
    n = classes * shots
    x = torch.nn.functional.normalize(torch.randn(subsets, n, dim, generator=g), dim=-1)
    y = torch.arange(n).remainder(classes).repeat(subsets, 1)
    masks = (torch.rand(subsets, folds + 1, n, generator=g) < 0.67).float()
    masks[:, -1] = 1.0
    best = {t: float("inf") for t in threads}
    before = torch.get_num_threads()
    try:
        for r in range(repeats):
            for t in (threads if r % 2 == 0 else threads[::-1]):
                torch.set_num_threads(t)
                start = time.perf_counter()
                fit_logreg_path(x, y, masks, [1e-3], classes, max_iter=iters, tol=0.0)
                best[t] = min(best[t], time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return best


def run(threads: list[int], repeats: int = 3, quick: bool = False, save: bool = True) -> dict:
    rows, out_path = [], []
    for size in (QUICK_PATH_SIZES if quick else PATH_SIZES):
        secs = path_seconds(*size, threads, repeats=repeats if size[1] < 1000 else 1)   # 1000 classes: ~1 min
        w = work(*size)
        rows.append([" x ".join(map(str, size)), f"{w:.3g}", *(secs[t] for t in threads),
                     secs[threads[-1]] / secs[threads[0]], lowshot_threads(w, max(threads))])
        out_path.append({"subsets_classes_shots_dim": size, "work": w, "seconds": {str(t): secs[t] for t in threads}})
        say(f"  path {size}: " + ", ".join(f"{t} thr {secs[t]:.3f} s" for t in threads))
    table(f"3 L-BFGS iterations of the batched path at one lambda (best of {repeats}); the rule picks 1 thread "
          f"below work {ONE_THREAD_BELOW:.3g}", ["subsets x classes x shots x dim", "work",
                                                 *(f"s, {t} thr" for t in threads),
                                                 f"{threads[-1]} thr / {threads[0]} thr", "rule picks"], rows)
    rows, out_eval = [], []
    for s, c, k, d in EVAL_SIZES:
        x, y, tx, ty = clustered(c * 40, 2000, d, c, noise=8.0, seed=1)
        subsets = [k_per_class_subset(y, k, i) for i in range(s)]
        res, secs = {}, {t: float("inf") for t in threads}
        for r in range(repeats if not quick else 1):
            for t in (threads if r % 2 == 0 else threads[::-1]):
                start = time.perf_counter()
                res[t] = lowshot_eval(x, y, tx, ty, subsets, threads=t)
                secs[t] = min(secs[t], time.perf_counter() - start)
        same = all([p["lambda"] for p in res[t].per_seed] == [p["lambda"] for p in res[threads[0]].per_seed]
                   and abs(res[t].top1_mean - res[threads[0]].top1_mean) < 1e-9 for t in threads)
        rows.append([f"{s} x {c} x {k} x {d}", *(secs[t] for t in threads), secs[threads[-1]] / secs[threads[0]],
                     res[threads[0]].top1_mean, same])
        out_eval.append({"subsets_classes_shots_dim": (s, c, k, d), "work": work(s, c, k, d),
                         "seconds": {str(t): secs[t] for t in threads}, "same_lambdas_and_top1": same})
        say(f"  lowshot_eval {(s, c, k, d)}: " + ", ".join(f"{t} thr {secs[t]:.2f} s" for t in threads))
    table(f"lowshot_eval, {len(DEFAULT_LAMBDAS)} lambdas x 3 folds", ["subsets x classes x shots x dim",
          *(f"s, {t} thr" for t in threads), f"{threads[-1]} thr / {threads[0]} thr", "top-1 %",
          "same lambdas + top-1"], rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {"threads": threads, "one_thread_below": ONE_THREAD_BELOW, "path": out_path, "lowshot_eval": out_eval,
           "load_avg_1min_after": load}
    if save:
        update_results("lowshot_threads", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the two largest path sizes; one lowshot_eval run each")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    return run(a.threads, a.repeats, a.quick)


if __name__ == "__main__":
    main()
