"""The math of the analysis tasks, on numpy arrays (features may be float16 memory maps).

Both functions work through the small D x D (or N x N) Gram matrix in float64, so a 25k x 1280
embedding matrix costs one matrix product and no full SVD."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"{what} needs a [N, D] matrix with N >= 2, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise UserError(f"{what}: features contain NaN or inf values")
    return x


def _singular_values(x: np.ndarray) -> np.ndarray:
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[::-1]


def rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalized singular values of the
    (uncentered) embedding matrix; between 1 and min(N, D)."""
    s = _singular_values(_as_2d(x, "rankme"))
    if s[0] <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019) between two representations of the same N inputs:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centered Xc, Yc. Invariant to
    orthogonal transforms and isotropic scaling; 1 for identical representations."""
    x, y = _centered(x), _centered(y)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"cka compares the same inputs: got {x.shape[0]} and {y.shape[0]} rows")
    return _cka_centered(x, y)


def _centered(x: np.ndarray) -> np.ndarray:
    x = _as_2d(x, "cka")
    return x - x.mean(0)


def _cka_centered(x: np.ndarray, y: np.ndarray) -> float:
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def cka_matrix(reps: Sequence[np.ndarray]) -> np.ndarray:
    """Symmetric matrix of pairwise linear CKA; the diagonal is 1 (0 for a constant representation)."""
    reps = [_centered(r) for r in reps]  # center (and copy to float64) once, not once per pair
    if len({r.shape[0] for r in reps}) > 1:
        raise UserError("cka compares the same inputs: the representations differ in row count")
    n = len(reps)
    out = np.eye(n)
    for i in range(n):
        out[i, i] = _cka_centered(reps[i], reps[i])
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = _cka_centered(reps[i], reps[j])
    return out
