"""Low-shot evaluation (ImageNet-1% style): multinomial logistic regression on L2-normalized features.

The regularization strength is swept from strong to weak on a log grid, each fit warm-started from the
previous one, and chosen by stratified cross-validation *inside* the labelled subset. All problems of a
sweep step - every seed (subset) x every fold, plus the fit on the whole subset - are solved as one
batched, separable objective with L-BFGS, so the cost of many small solves becomes one batched matmul.

Objective per problem: mean cross-entropy over its rows + lam / 2 * ||W||^2 (bias not penalized);
scikit-learn's ``C`` is ``1 / (lam * n_rows)``."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .knn import unit_rows
from .stream import chunk_rows, iter_blocks

DEFAULT_LAMBDAS = tuple(float(v) for v in np.logspace(1, -9, 21))
# One L-BFGS closure is a handful of small ops. Below this many multiply-adds in its logits matmul
# (subsets x (folds + 1) x labelled rows x dim x classes) the sweep runs on one torch thread: on 2 shared
# cores (benchmarks/lowshot_threads.py) 2 threads were 1.3-18x slower per L-BFGS iteration up to 5.5e8
# (100 classes x 12 shots, dim 384, 3 subsets); from 1.8e9 to 6.1e10 (1000 classes, dim 1280, 1 subset)
# they were 1.0-1.6x slower, or once 1.4x faster. Above the threshold the caller's count stays: the gain
# is small and uncertain there, and a bigger problem can use the cores of an idle many-core node.
ONE_THREAD_BELOW = 10**9


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A float32 copy with unit-norm rows (the input is never modified): k-NN's ``unit_rows``, as numpy."""
    return unit_rows(x).numpy()


def k_per_class_subset(y: np.ndarray, k: int, seed: int, classes: Sequence[str] | None = None) -> np.ndarray:
    """Sorted row indices of ``k`` random images per class. A class with fewer than ``k`` images is an
    error: a "k-shot" number computed with fewer shots for some classes would be mislabelled."""
    if k < 1:
        raise UserError(f"k_per_class must be positive, got {k}")
    labels, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        c = int(labels[np.argmin(counts)])
        name = f"'{classes[c]}'" if classes is not None and c < len(classes) else str(c)
        raise UserError(f"k_per_class is {k} but class {name} has only {counts.min()} training images "
                        f"({int((counts < k).sum())} classes have fewer than {k}); lower k_per_class or "
                        f"use more training images")
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in labels]
    return np.sort(np.concatenate(rows))


def subset_from_file(path: str | Path, file_names: Sequence[str] | None, classes: Sequence[str],
                     y: np.ndarray) -> np.ndarray:
    """Rows named by a SimCLR-format subset file (one ``n01440764_10026.JPEG`` per line, class = the text
    before the first ``_``). Every named file must exist in the split, in the class its name says."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"subset file not found: {path}")
    if file_names is None:
        raise UserError("subset files need a dataset with file names (e.g. imagefolder)")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise UserError(f"subset file {path} is empty")
    index = {Path(n).name: i for i, n in enumerate(file_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} images of {path.name} are not in the training split "
                        f"(first: {missing[0]})")
    rows = np.array([index[n] for n in names])
    wrong = [n for n, r in zip(names, rows) if "_" in n and n.split("_")[0] != classes[y[r]]]
    if wrong:
        raise UserError(f"{path.name}: {wrong[0]} is filed under class '{classes[y[index[wrong[0]]]]}', "
                        f"not '{wrong[0].split('_')[0]}'")
    return np.unique(rows)


def fit_logreg_path(x: torch.Tensor, y: torch.Tensor, fit_masks: torch.Tensor, lambdas: Sequence[float],
                    n_classes: int, max_iter: int = 100, tol: float = 1e-6,
                    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve many L2-regularized multinomial logistic regressions along a regularization path.

    ``x`` [S, n, D] and ``y`` [S, n] hold S data sets (padded rows have zero weight everywhere);
    ``fit_masks`` [S, P, n] selects the rows of P problems on each. For each ``lam`` in ``lambdas`` (keep
    them descending: each solve starts from the previous solution) all S x P problems are solved at
    once, then ``on_step(i, weight [S, P, D, C], bias [S, P, C])`` is called. Returns the last solution."""
    s, p, _ = fit_masks.shape
    weight = torch.zeros(s, p, x.shape[-1], n_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(s, p, n_classes, device=x.device, requires_grad=True)
    w_rows = fit_masks / fit_masks.sum(-1, keepdim=True).clamp_min(1)        # mean over each problem's rows
    target = y[:, None, :].expand(s, p, -1)
    for i, lam in enumerate(lambdas):
        opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=10,
                                tolerance_grad=tol, tolerance_change=tol * 1e-3, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = torch.matmul(x[:, None], weight) + bias[:, :, None]                  # [S, P, n, C]
            nll = -F.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)   # [S, P, n]
            loss = (nll * w_rows).sum() + 0.5 * lam * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        if on_step is not None:
            on_step(i, weight.detach(), bias.detach())
    return weight.detach(), bias.detach()


def lowshot_threads(work: int, current: int | None = None) -> int:
    """Torch threads for a sweep whose logits matmul has ``work`` multiply-adds: 1 below
    ``ONE_THREAD_BELOW``, else ``current`` (default: ``torch.get_num_threads()``)."""
    current = torch.get_num_threads() if current is None else current
    return 1 if work < ONE_THREAD_BELOW else current


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block; the previous count is restored, also on error."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class LowShotResult:
    top1_mean: float
    top1_std: float                                  # sample standard deviation over seeds/subsets
    per_seed: list[dict[str, float]]                 # top1, lambda, cv_top1, n_labelled per seed/subset
    cv_grid: list[list[float]] = field(default_factory=list)   # [seed][lambda] mean CV top-1
    threads: int | None = None                       # torch threads the sweep ran with (None: not on the CPU)


def lowshot_eval(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 subsets: Sequence[np.ndarray], lambdas: Sequence[float] = DEFAULT_LAMBDAS, n_folds: int = 3,
                 seed: int = 0, n_classes: int | None = None, device: torch.device | str = "cpu",
                 max_iter: int = 100, threads: int | None = None) -> LowShotResult:
    """Low-shot top-1 (percent) for each labelled subset (rows of ``train_x``), mean and std over them.
    ``lam`` is chosen per subset by ``n_folds``-fold stratified CV inside it; the final classifier is the
    fit on the whole subset with that ``lam`` (solved in the same batched sweep).

    On the CPU the sweep runs with ``threads`` torch threads, by default ``lowshot_threads`` of the problem
    size (one thread for small problems); the caller's thread count is restored afterwards, also on error.
    The thread count changes float rounding only, not the method."""
    from sklearn.model_selection import StratifiedKFold
    device = torch.device(device)
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    if not subsets:
        raise UserError("low-shot needs at least one labelled subset")
    lambdas = sorted((float(v) for v in lambdas), reverse=True)
    if not lambdas or lambdas[-1] <= 0:
        raise UserError("lambdas must be a non-empty list of positive numbers")
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    n_classes = n_classes or int(train_y.max()) + 1
    n_max = max(len(r) for r in subsets)
    s = len(subsets)
    xs = np.zeros((s, n_max, train_x.shape[1]), dtype=np.float32)
    ys = np.zeros((s, n_max), dtype=np.int64)
    fit = np.zeros((s, n_folds + 1, n_max), dtype=np.float32)
    val = np.zeros((s, n_folds, n_max), dtype=bool)
    for i, rows in enumerate(subsets):
        rows = np.sort(np.asarray(rows))
        xs[i, :len(rows)] = l2_normalize(train_x[rows])
        ys[i, :len(rows)] = train_y[rows]
        counts = np.bincount(train_y[rows])
        if counts[counts > 0].min() < n_folds:
            raise UserError(f"cross-validation with {n_folds} folds needs >= {n_folds} labelled images per "
                            f"class; subset {i} has a class with {counts[counts > 0].min()}")
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed + i)
        for f, (tr, va) in enumerate(folds.split(np.zeros(len(rows)), train_y[rows])):
            fit[i, f, tr], val[i, f, va] = 1.0, True
        fit[i, n_folds, :len(rows)] = 1.0
    if device.type == "cpu":
        n_threads = threads or lowshot_threads(s * (n_folds + 1) * n_max * train_x.shape[1] * n_classes)
    else:
        n_threads = None                                 # the sweep runs on the accelerator
    with torch_threads(n_threads or torch.get_num_threads()):
        top1, cv = _sweep(xs, ys, fit, val, test_x, test_y, lambdas, n_folds, n_classes, device, max_iter)
    chosen = cv.argmax(1)
    per_seed = [{"top1": float(top1[i]), "lambda": lambdas[chosen[i]], "cv_top1": float(cv[i, chosen[i]]),
                 "n_labelled": int(len(subsets[i]))} for i in range(s)]
    return LowShotResult(float(top1.mean()), float(top1.std(ddof=1)) if s > 1 else 0.0, per_seed, cv.tolist(),
                         n_threads)


def _sweep(xs: np.ndarray, ys: np.ndarray, fit: np.ndarray, val: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray, lambdas: list[float], n_folds: int, n_classes: int, device: torch.device,
           max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """The batched path and the test predictions of ``lowshot_eval``: (test top-1 [S], CV grid [S, lambdas])."""
    s, dim = xs.shape[0], xs.shape[2]
    x_t, y_t = torch.from_numpy(xs).to(device), torch.from_numpy(ys).to(device)
    val_t = torch.from_numpy(val).to(device)
    cv = np.zeros((s, len(lambdas)))
    best_w = torch.zeros(s, dim, n_classes, device=device)
    best_b = torch.zeros(s, n_classes, device=device)

    def on_step(j: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            pred = (torch.einsum("snd,sfdc->sfnc", x_t, weight[:, :n_folds]) + bias[:, :n_folds, None]).argmax(-1)
            hits = ((pred == y_t[:, None]) & val_t).sum(-1).float() / val_t.sum(-1).float()   # [S, folds]
            cv[:, j] = 100.0 * hits.mean(1).cpu().numpy()
            for i in range(s):
                if j == 0 or cv[i, j] > cv[i, :j].max():    # ties keep the stronger regularization
                    best_w[i], best_b[i] = weight[i, n_folds], bias[i, n_folds]

    fit_logreg_path(x_t, y_t, torch.from_numpy(fit).to(device), lambdas, n_classes, max_iter, on_step=on_step)
    correct = np.zeros(s)
    with torch.no_grad():
        for feats, sel in iter_blocks(test_x, np.arange(len(test_x)), chunk_rows(test_x)):
            z = torch.from_numpy(l2_normalize(feats)).to(device)
            pred = (torch.einsum("nd,sdc->snc", z, best_w) + best_b[:, None]).argmax(-1).cpu().numpy()
            correct += (pred == test_y[sel][None]).sum(1)
    return 100.0 * correct / len(test_x), cv
