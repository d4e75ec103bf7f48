"""k-NN for training features larger than RAM: the queries stay in memory, the training memory map is
read once, chunk by chunk, and a running top-k is merged per chunk. Same votes as ``knn_eval``, but the
peak memory is one chunk plus the queries instead of a float32 FAISS index of the whole training set
(1.28 M x 1280 would be 6.6 GB)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from .knn import check_knn_inputs


def _unit_rows(x: np.ndarray) -> torch.Tensor:
    block = torch.from_numpy(np.array(x, dtype=np.float32, copy=True))    # never writes into the caller's array
    if not torch.isfinite(block).all():
        raise UserError("features contain NaN or inf values; refusing to evaluate them")
    return torch.nn.functional.normalize(block, dim=1, eps=1e-12)


def knn_eval_streaming(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
                       chunk: int = 65536, query_chunk: int = 8192) -> dict[int, float]:
    """Top-1 accuracy (percent) for each k, votes weighted by exp(sim / T), as ``knn_eval``."""
    train_y, test_y, ks, k_max = check_knn_inputs(train_x, train_y, test_x, test_y, ks)
    queries = _unit_rows(test_x)
    best_s = torch.full((len(queries), k_max), -torch.inf)
    best_i = torch.zeros((len(queries), k_max), dtype=torch.int64)
    for start in range(0, len(train_x), chunk):
        block = _unit_rows(train_x[start:start + chunk])
        kk = min(k_max, len(block))
        for q in range(0, len(queries), query_chunk):
            s, i = (queries[q:q + query_chunk] @ block.T).topk(kk, dim=1)
            s = torch.cat([best_s[q:q + query_chunk], s], 1)
            i = torch.cat([best_i[q:q + query_chunk], i + start], 1)
            top = s.topk(k_max, dim=1)
            best_s[q:q + query_chunk], best_i[q:q + query_chunk] = top.values, i.gather(1, top.indices)
    labels = torch.from_numpy(train_y)[best_i]
    weights = (best_s.double() / temperature).exp()
    truth = torch.from_numpy(test_y)
    n_classes = int(train_y.max()) + 1
    out = {}
    for k in ks:
        kk = min(k, k_max)
        votes = torch.zeros(len(truth), n_classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
        out[k] = 100.0 * int((votes.argmax(1) == truth).sum()) / len(truth)   # as knn_eval: equal floats
    return out
