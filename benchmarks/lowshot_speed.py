"""Low-shot sweep speed: ``lowshot_eval`` (every subset x fold x lambda solved as one batched L-BFGS
path) against a plain scikit-learn ``LogisticRegression`` loop over the same subsets, stratified folds
and lambda grid (C = 1 / (lam * n_rows)); both must select the same lambda and reach the same accuracy.

    python -m benchmarks.lowshot_speed [--quick] [--classes 100 --dim 384 --k 13 --seeds 3]"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from benchmarks._common import say, table, update_results
from benchmarks.knn_speed import clustered
from jepa_eval.probes.lowshot import DEFAULT_LAMBDAS, k_per_class_subset, l2_normalize, lowshot_eval


def sklearn_lowshot(train_x, train_y, test_x, test_y, subsets, lambdas=DEFAULT_LAMBDAS, n_folds: int = 3,
                    seed: int = 0) -> list[dict]:
    """The loop a user would write: one LogisticRegression per (subset, fold, lambda), then a refit."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    lambdas = sorted(lambdas, reverse=True)
    test = l2_normalize(test_x)
    out = []
    for i, rows in enumerate(subsets):
        rows = np.sort(rows)
        x, y = l2_normalize(train_x[rows]), train_y[rows]
        cv = np.zeros(len(lambdas))
        for tr, va in StratifiedKFold(n_folds, shuffle=True, random_state=seed + i).split(x, y):
            for j, lam in enumerate(lambdas):
                clf = LogisticRegression(C=1.0 / (lam * len(tr)), max_iter=1000, tol=1e-6)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(x[tr], y[tr])
                cv[j] += 100.0 * clf.score(x[va], y[va]) / n_folds
        best = int(np.argmax(cv))                                      # first best = strongest regularization
        clf = LogisticRegression(C=1.0 / (lambdas[best] * len(x)), max_iter=1000, tol=1e-6).fit(x, y)
        out.append({"top1": 100.0 * clf.score(test, test_y), "lambda": lambdas[best], "cv_top1": cv[best]})
    return out


def run(n_classes: int = 100, dim: int = 384, k: int = 13, seeds: int = 3, n_test: int = 5000,
        save: bool = True, threads: int | None = None) -> dict:
    x, y, tx, ty = clustered(n_classes * 40, n_test, dim, n_classes, noise=8.0, seed=1)
    subsets = [k_per_class_subset(y, k, s) for s in range(seeds)]
    t = time.perf_counter()
    ours = lowshot_eval(x, y, tx, ty, subsets, threads=threads)     # None: lowshot_eval picks (lowshot_threads)
    t_ours = time.perf_counter() - t
    say(f"  lowshot_eval: {t_ours:.2f} s with {ours.threads} torch thread(s)")
    t = time.perf_counter()
    ref = sklearn_lowshot(x, y, tx, ty, subsets)
    t_ref = time.perf_counter() - t
    say(f"  sklearn loop: {t_ref:.2f} s")
    ref_top1 = float(np.mean([r["top1"] for r in ref]))
    same_lambda = [p["lambda"] == r["lambda"] for p, r in zip(ours.per_seed, ref)]
    table(f"Low-shot sweep, {n_classes} classes x {k} labelled, dim {dim}, {seeds} subsets, "
          f"{len(DEFAULT_LAMBDAS)} lambdas x 3 folds",
          ["method", "seconds", "speed-up", "top-1 % (mean)", "chosen lambdas"],
          [["jepa_eval lowshot_eval (batched L-BFGS)", t_ours, t_ref / t_ours, ours.top1_mean,
            " ".join(f"{p['lambda']:.1e}" for p in ours.per_seed)],
           ["sklearn LogisticRegression loop", t_ref, 1.0, ref_top1, " ".join(f"{r['lambda']:.1e}" for r in ref)]])
    out = {"classes": n_classes, "dim": dim, "k_per_class": k, "subsets": seeds, "lambdas": len(DEFAULT_LAMBDAS),
           "seconds_suite": t_ours, "seconds_sklearn": t_ref, "top1_suite": ours.top1_mean, "top1_sklearn": ref_top1,
           "same_lambda": same_lambda, "top1_diff": ours.top1_mean - ref_top1, "torch_threads": torch.get_num_threads(),
           "lowshot_eval_threads": ours.threads,
           "headline": {"lowshot_speedup_vs_sklearn_loop": t_ref / t_ours}}
    if save:
        update_results("lowshot_speed", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 classes, dim 256, 2 subsets")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=13, help="labelled images per class (ImageNet-1% has ~13)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both methods (default: lowshot_eval picks its own, 1 for small problems)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    return run(40, 256, a.k, 2, 2000, threads=a.threads) if a.quick else run(a.classes, a.dim, a.k, a.seeds,
                                                                               threads=a.threads)


if __name__ == "__main__":
    main()
