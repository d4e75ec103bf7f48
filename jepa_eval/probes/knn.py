"""Weighted k-NN classification (DINO protocol) on L2-normalized features.

Two searches feed one vote: a streaming torch search (the training features, possibly a memory map larger
than RAM, are read once, chunk by chunk, keeping a running top-k: memory is one chunk plus the queries) and a
FAISS flat inner-product index (on the GPU with faiss-gpu). ``choose_knn_backend`` says which one "auto"
takes and why; both give the same accuracies."""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError

BACKENDS = ("auto", "faiss", "streaming")
QUERY_BLOCK_BYTES = 256 << 20          # one [queries x train chunk] float32 similarity block at most


def unit_rows(x: np.ndarray) -> torch.Tensor:
    """A private float32 copy of ``x`` with L2-normalized rows (a float32 input is never written to)."""
    block = torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))
    if not torch.isfinite(block).all():
        raise UserError("features contain NaN or inf values; refusing to evaluate them")
    return torch.nn.functional.normalize(block, dim=1, eps=1e-12)


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


def _faiss_gpu() -> bool:
    import faiss
    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def choose_knn_backend(n_train: int, dim: int, backend: str = "auto") -> tuple[str, str]:
    """``(backend, why)`` for ``knn_eval``: "faiss" or "streaming". "auto" takes FAISS on a GPU (faiss-gpu +
    CUDA: the index lives in GPU memory) and the streaming torch search on a CPU, where it is at least as
    fast as FAISS's flat index (benchmarks/knn_speed.py) and its memory does not grow with the training set
    (FAISS holds a float32 copy of it: 6.1 GiB for 1.28 M x 1280, 14 GiB peak while it grows)."""
    if backend not in BACKENDS:
        raise UserError(f"k-NN backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend, f"backend={backend!r} requested"
    if _faiss_gpu():
        return "faiss", "FAISS GPU index (faiss-gpu + CUDA)"
    return "streaming", f"CPU: torch search over {n_train:,} x {dim} in chunks"


def _gpu_index(dim: int):
    import faiss
    if _faiss_gpu():
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, dim), res
    return faiss.IndexFlatIP(dim), None


def faiss_topk(train_x: np.ndarray, queries: torch.Tensor, k: int, chunk: int = 65536
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) [queries, k] of the nearest training rows through a FAISS flat index."""
    index, _res = _gpu_index(train_x.shape[1])
    for start in range(0, len(train_x), chunk):
        index.add(unit_rows(train_x[start:start + chunk]).numpy())
    sims, idx = index.search(queries.numpy(), k)
    return torch.from_numpy(sims), torch.from_numpy(idx)


def streaming_topk(train_x: np.ndarray, queries: torch.Tensor, k: int, chunk: int = 65536,
                   query_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) [queries, k] of the nearest training rows: ``train_x`` is read once, ``chunk``
    rows at a time, and each block of queries merges the chunk's top-k into its running top-k."""
    query_chunk = query_chunk or max(1, QUERY_BLOCK_BYTES // (4 * min(chunk, len(train_x))))
    best_s = torch.full((len(queries), k), -torch.inf)
    best_i = torch.zeros((len(queries), k), dtype=torch.int64)
    for start in range(0, len(train_x), chunk):
        block = unit_rows(train_x[start:start + chunk])
        kk = min(k, len(block))
        for q in range(0, len(queries), query_chunk):
            s, i = (queries[q:q + query_chunk] @ block.T).topk(kk, dim=1)
            if start == 0 and kk == k:         # the first chunk's top-k is the running top-k
                best_s[q:q + query_chunk], best_i[q:q + query_chunk] = s, i
                continue
            s = torch.cat([best_s[q:q + query_chunk], s], 1)
            i = torch.cat([best_i[q:q + query_chunk], i + start], 1)
            top = s.topk(k, dim=1)
            best_s[q:q + query_chunk], best_i[q:q + query_chunk] = top.values, i.gather(1, top.indices)
    return best_s, best_i


def vote_accuracies(sims: torch.Tensor, idx: torch.Tensor, train_y: np.ndarray, test_y: np.ndarray,
                    ks: Sequence[int], temperature: float) -> dict[int, float]:
    """Top-1 (percent) for each k of the DINO vote: the k nearest neighbours (sorted by similarity) vote for
    their class with weight exp(sim / T); the class count comes from the training labels."""
    labels = torch.from_numpy(train_y)[idx]
    weights = (sims.double() / temperature).exp()
    truth = torch.from_numpy(test_y)
    n_classes = int(train_y.max()) + 1
    out = {}
    for k in ks:
        kk = min(k, idx.shape[1])
        votes = torch.zeros(len(truth), n_classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
        out[k] = 100.0 * int((votes.argmax(1) == truth).sum()) / len(truth)
    return out


def knn_eval(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
             chunk: int = 65536, backend: str = "auto", verbose: bool = True,
             query_chunk: int | None = None) -> dict[int, float]:
    """Top-1 accuracy (percent) for each k. Votes are weighted by exp(sim / T); the class count comes
    from the training labels. Features may be memory-maps: they are normalized chunk by chunk.

    ``backend``: "streaming" (torch; reads the training set once, ``chunk`` rows at a time), "faiss" (a flat
    index of the whole training set, on the GPU with faiss-gpu) or "auto" (``choose_knn_backend``). One line
    on stderr says which path ran and why (``verbose=False`` silences it)."""
    train_y, test_y, ks, k_max = check_knn_inputs(train_x, train_y, test_x, test_y, ks)
    backend, why = choose_knn_backend(len(train_x), train_x.shape[1], backend)
    if verbose:
        print(f"jepa-eval: k-NN via {backend} ({why})", file=sys.stderr, flush=True)
    queries = unit_rows(test_x)
    if backend == "faiss":
        sims, idx = faiss_topk(train_x, queries, k_max, chunk)
    else:
        sims, idx = streaming_topk(train_x, queries, k_max, chunk, query_chunk)
    return vote_accuracies(sims, idx, train_y, test_y, ks, temperature)


def knn_eval_streaming(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
                       chunk: int = 65536, query_chunk: int | None = None) -> dict[int, float]:
    """``knn_eval`` on the streaming torch path, silently."""
    return knn_eval(train_x, train_y, test_x, test_y, ks, temperature, chunk, "streaming", False, query_chunk)
