"""Compare the batched L-BFGS low-shot sweep with a plain scikit-learn loop doing the same protocol
(same subsets, folds, lambda grid; warm starts along the path; C = 1 / (lam * n_rows)).

    PYTHONPATH=. python benchmarks/lowshot_vs_sklearn.py [--classes 100 --dim 384 --k 12 --seeds 3]"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from jepa_eval.probes.lowshot import DEFAULT_LAMBDAS, k_per_class_subset, l2_normalize, lowshot_eval


def sklearn_lowshot(train_x, train_y, test_x, test_y, subsets, lambdas=DEFAULT_LAMBDAS, n_folds=3, seed=0):
    """The reference: one LogisticRegression per (subset, fold, lambda), warm-started along the path."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    lambdas = sorted(lambdas, reverse=True)
    tx = l2_normalize(test_x)
    accs = []
    for i, rows in enumerate(subsets):
        x, y = l2_normalize(train_x[np.sort(rows)]), train_y[np.sort(rows)]
        folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed + i).split(x, y))
        cv = np.zeros(len(lambdas))
        for tr, va in folds:
            clf = LogisticRegression(max_iter=1000, warm_start=True, tol=1e-6)
            for j, lam in enumerate(lambdas):
                clf.set_params(C=1.0 / (lam * len(tr)))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(x[tr], y[tr])
                cv[j] += clf.score(x[va], y[va]) / n_folds
        lam = lambdas[int(cv.argmax())]
        clf = LogisticRegression(C=1.0 / (lam * len(x)), max_iter=1000, tol=1e-6).fit(x, y)
        accs.append(100.0 * clf.score(tx, test_y))
    return float(np.mean(accs)), accs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(a.classes, a.dim)) * 0.25
    y = np.repeat(np.arange(a.classes), 60)
    x = (centers[y] + rng.normal(size=(len(y), a.dim))).astype(np.float16)
    ty = np.repeat(np.arange(a.classes), 20)
    tx = (centers[ty] + rng.normal(size=(len(ty), a.dim))).astype(np.float16)
    subsets = [k_per_class_subset(y, a.k, s) for s in range(a.seeds)]
    t = time.perf_counter()
    ours = lowshot_eval(x, y, tx, ty, subsets)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref, ref_accs = sklearn_lowshot(x, y, tx, ty, subsets)
    t_ref = time.perf_counter() - t
    print(f"batched L-BFGS: {ours.top1_mean:.2f} +- {ours.top1_std:.2f} in {t_ours:.2f}s "
          f"(lambdas {[p['lambda'] for p in ours.per_seed]})")
    print(f"sklearn loop:   {ref:.2f} ({', '.join(f'{v:.2f}' for v in ref_accs)}) in {t_ref:.2f}s")
    print(f"speed-up {t_ref / t_ours:.1f}x  [{a.classes} classes, dim {a.dim}, k {a.k}, {a.seeds} seeds]")


if __name__ == "__main__":
    main()
