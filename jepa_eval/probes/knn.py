"""Weighted k-NN classification (DINO protocol) on L2-normalized features.

Two exact searches feed one vote, both reading the training features (possibly a memory map larger than
RAM) once, chunk by chunk, into a running top-k, so memory is one chunk plus the queries: a FAISS flat
inner-product index per chunk (on the GPU with faiss-gpu) and torch matmul + top-k ("streaming").
``choose_knn_backend`` says which one "auto" takes and why; both give the same accuracies."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..log import get_logger

log = get_logger(__name__)

BACKENDS = ("auto", "faiss", "streaming")
QUERY_BLOCK_BYTES = 128 << 20          # one [queries x train chunk] float32 similarity block at most


def unit_rows(x: np.ndarray) -> torch.Tensor:
    """A private float32 copy of ``x`` with L2-normalized rows (a float32 input is never written to); the
    same numbers as ``F.normalize(eps=1e-12)``, normalized in place. A NaN or inf makes its row's norm
    non-finite, so the whole block is only scanned when some norm is (8x faster than scanning always)."""
    block = torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    if not torch.isfinite(norms).all() and not torch.isfinite(block).all():
        raise UserError("features contain NaN or inf values; refusing to evaluate them")
    return block.div_(norms.clamp_min_(1e-12))


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
    """``(backend, why)`` for ``knn_eval``: "faiss" or "streaming". "auto" takes FAISS: its flat index
    (a GPU index with faiss-gpu + CUDA) searched one training chunk at a time, so its memory does not grow
    with the training set either. On 2 CPU cores it was the fastest exact path measured (50,000 x 384,
    2,000 queries: 0.51-0.64 s against 0.60-0.69 s for the streaming torch search; benchmarks/README.md);
    ``backend="streaming"`` keeps the torch search available. Both give the same accuracies."""
    if backend not in BACKENDS:
        raise UserError(f"k-NN backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend, f"backend={backend!r} requested"
    if _faiss_gpu():
        return "faiss", "FAISS GPU index (faiss-gpu + CUDA)"
    return "faiss", f"FAISS CPU flat index over {n_train:,} x {dim}, chunk by chunk"


def _gpu_index(dim: int):
    import faiss
    if _faiss_gpu():
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, dim), res
    return faiss.IndexFlatIP(dim), None


def _empty_topk(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, k), -torch.inf), torch.zeros((n, k), dtype=torch.int64)


def _merge_topk(best_s: torch.Tensor, best_i: torch.Tensor, s: torch.Tensor, i: torch.Tensor, offset: int,
                rows: slice) -> None:
    """Merge a chunk's top-k (``i`` relative to the chunk starting at ``offset``) into the running top-k."""
    k = best_s.shape[1]
    if offset == 0 and s.shape[1] == k:          # the first chunk's top-k is the running top-k
        best_s[rows], best_i[rows] = s, i
        return
    s = torch.cat([best_s[rows], s], 1)
    i = torch.cat([best_i[rows], i + offset], 1)
    top = s.topk(k, dim=1)
    best_s[rows], best_i[rows] = top.values, i.gather(1, top.indices)


def faiss_topk(train_x: np.ndarray, queries: torch.Tensor, k: int, chunk: int = 65536
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) [queries, k] of the nearest training rows: a FAISS flat inner-product index
    of one ``chunk`` of the training rows at a time, searched with every query and merged into a running
    top-k, so memory is one chunk (a whole-set index of 1.28 M x 1280 peaked at 14 GiB)."""
    best_s, best_i = _empty_topk(len(queries), k)
    q = queries.numpy()
    for start in range(0, len(train_x), chunk):
        block = unit_rows(train_x[start:start + chunk])
        index, _res = _gpu_index(block.shape[1])
        index.add(block.numpy())
        sims, idx = index.search(q, min(k, len(block)))
        _merge_topk(best_s, best_i, torch.from_numpy(sims), torch.from_numpy(idx), start, slice(None))
    return best_s, best_i


def streaming_topk(train_x: np.ndarray, queries: torch.Tensor, k: int, chunk: int = 65536,
                   query_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) [queries, k] of the nearest training rows by torch matmul + top-k:
    ``train_x`` is read once, ``chunk`` rows at a time, each block of queries merging the chunk's top-k."""
    query_chunk = query_chunk or max(1, QUERY_BLOCK_BYTES // (4 * min(chunk, len(train_x))))
    best_s, best_i = _empty_topk(len(queries), k)
    # one similarity buffer, reused: a fresh [queries x chunk] result each time costs more in page faults
    # than the copy-free GEMM saves (0.55 s -> 0.44 s for 2,000 x 50,000 x 384 on 2 cores)
    sims = torch.empty(min(query_chunk, len(queries)) * min(chunk, len(train_x)))
    for start in range(0, len(train_x), chunk):
        block = unit_rows(train_x[start:start + chunk])
        kk = min(k, len(block))
        for q in range(0, len(queries), query_chunk):
            part = queries[q:q + query_chunk]
            out = sims[:len(part) * len(block)].view(len(part), len(block))
            s, i = torch.mm(part, block.T, out=out).topk(kk, dim=1)
            _merge_topk(best_s, best_i, s, i, start, slice(q, q + query_chunk))
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

    ``backend``: "faiss" (a flat index per ``chunk`` of training rows, on the GPU with faiss-gpu), "streaming"
    (torch matmul + top-k per chunk) or "auto" (``choose_knn_backend``). One line is logged (INFO; the
    command line shows it on stderr) saying which path ran and why (``verbose=False`` silences it)."""
    train_y, test_y, ks, k_max = check_knn_inputs(train_x, train_y, test_x, test_y, ks)
    backend, why = choose_knn_backend(len(train_x), train_x.shape[1], backend)
    if verbose:
        log.info("jepa-eval: k-NN via %s (%s)", backend, why)
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
