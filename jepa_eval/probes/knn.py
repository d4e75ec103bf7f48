"""Weighted k-NN classification (DINO protocol) with FAISS on L2-normalized features."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import UserError


def _normalized(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    # always a private copy: a float32 input would otherwise be normalized in the caller's array
    block = np.array(x[start:stop], dtype=np.float32, copy=True, order="C")
    if not np.isfinite(block).all():
        raise UserError("features contain NaN or inf values; refusing to evaluate them")
    block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return block


def check_knn_inputs(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """Labels as int64, the sorted distinct ks and the largest usable k; UserError for bad input."""
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise UserError("features and labels differ in length")
    if len(train_x) == 0 or len(test_x) == 0:
        raise UserError("k-NN needs at least one training and one test image")
    ks = sorted({int(k) for k in ks})
    if ks[0] < 1:
        raise UserError(f"k must be positive, got {ks[0]}")
    k_max = min(ks[-1], len(train_x))
    return train_y, test_y, ks, k_max


def _gpu_index(dim: int):
    import faiss
    if hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, dim), res
    return faiss.IndexFlatIP(dim), None


def knn_eval(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
             chunk: int = 65536) -> dict[int, float]:
    """Top-1 accuracy (percent) for each k. Votes are weighted by exp(sim / T); the class count comes
    from the training labels. Features may be memory-maps: they are normalized chunk by chunk."""
    train_y, test_y, ks, k_max = check_knn_inputs(train_x, train_y, test_x, test_y, ks)
    n_classes = int(train_y.max()) + 1
    index, _res = _gpu_index(train_x.shape[1])
    for start in range(0, len(train_x), chunk):
        index.add(_normalized(train_x, start, start + chunk))
    correct = {k: 0 for k in ks}
    for start in range(0, len(test_x), chunk):
        sims, nn_idx = index.search(_normalized(test_x, start, start + chunk), k_max)
        labels = torch.from_numpy(train_y[nn_idx])                 # [q, k_max]
        weights = torch.from_numpy(sims.astype(np.float64) / temperature).exp()
        truth = torch.from_numpy(test_y[start:start + chunk])
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(len(truth), n_classes, dtype=torch.float64)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == truth).sum())
    return {k: 100.0 * correct[k] / len(test_x) for k in ks}
