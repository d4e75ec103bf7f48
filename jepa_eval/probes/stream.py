"""Shared helpers for probes trained on memory-mapped features: seeded hold-outs, chunked streaming
(a feature file is never read whole, so it may be larger than RAM), globally shuffled mini-batches and
atomic epoch checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..atomic import atomic_torch_save
from ..errors import UserError


def holdout_split(y: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified hold-out of about ``fraction`` of the rows: (fit_rows, holdout_rows),
    both sorted. Every class with two or more rows keeps at least one row on each side."""
    y = np.asarray(y)
    if not 0 < fraction < 1:
        raise UserError(f"hold-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(rows)))
        k = min(max(k, 1), len(rows) - 1) if len(rows) >= 2 else 0
        held.append(rows[:k])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if len(held) == 0:
        raise UserError("the training split is too small for a hold-out (every class needs 2 images)")
    fit = np.setdiff1d(np.arange(len(y)), held)
    return fit.astype(np.int64), held.astype(np.int64)


def chunk_rows(x: np.ndarray, budget_bytes: int = 256 << 20, minimum: int = 256) -> int:
    """Rows per chunk so that one float32 chunk stays within ``budget_bytes``."""
    per_row = 4 * int(np.prod(x.shape[1:]))
    return max(minimum, budget_bytes // max(per_row, 1))


def read_rows(x: np.ndarray, start: int, stop: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` (or only the absolute indices ``rows`` within them, in that order) as a private
    float32 array; NaN/inf features are refused."""
    part = x[start:stop]
    picked = part[rows - start] if rows is not None else part
    if picked.dtype == np.float16 and rows is not None:   # a private copy already: torch widens it 4-5x faster
        return _checked(torch.from_numpy(picked).to(torch.float32).numpy())
    block = np.asarray(picked, dtype=np.float32)
    if np.may_share_memory(block, part):    # never hand out a view of the (mem-mapped) source
        block = block.copy()
    return _checked(block)


def _checked(block: np.ndarray) -> np.ndarray:
    if not np.isfinite(block).all():
        raise UserError("features contain NaN or inf values; refusing to train on them")
    return block


def _chunk_rows(x: np.ndarray, rows: np.ndarray, chunk: int, order: np.ndarray | None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk index, the wanted sorted ``rows`` inside it) for each non-empty chunk, in ``order``."""
    n_chunks = (len(x) + chunk - 1) // chunk
    bounds = np.searchsorted(rows, np.arange(n_chunks + 1) * chunk)
    for c in (range(n_chunks) if order is None else order):
        if bounds[c + 1] > bounds[c]:
            yield c, rows[bounds[c]:bounds[c + 1]]


def iter_blocks(x: np.ndarray, rows: np.ndarray, chunk: int, order: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (features, row indices) for the wanted ``rows`` (sorted), one contiguous chunk of the file
    at a time, chunks visited in ``order`` (default: file order)."""
    for c, sel in _chunk_rows(x, rows, chunk, order):
        yield read_rows(x, c * chunk, min(len(x), (c + 1) * chunk), sel), sel


def epoch_batches(x: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int,
                  chunk: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``rows`` in a seeded permutation of all of them, cut into mini-batches: every batch is
    a uniform sample of the training rows, however the file is ordered (image folders are class-sorted).
    Rows are gathered ``chunk`` at a time (whole batches): sorted indices read from the (memory-mapped)
    file, then put back in permutation order, so memory stays one float32 chunk. Deterministic given
    (seed, epoch), so a resumed run sees the same batches; a final batch of one is dropped (BatchNorm)."""
    rng = np.random.default_rng([seed, epoch])
    order = np.asarray(rows)[rng.permutation(len(rows))]
    n = len(order) - 1 if len(order) % batch_size == 1 and len(order) > 1 else len(order)
    block = max(1, chunk // batch_size) * batch_size
    for start in range(0, n, block):
        sel = order[start:min(n, start + block)]
        back = np.argsort(sel, kind="stable")              # read in file order (pages once, forward)
        sorted_rows = sel[back]
        feats = read_rows(x, int(sorted_rows[0]), int(sorted_rows[-1]) + 1, sorted_rows)
        inverse = np.empty_like(back)
        inverse[back] = np.arange(len(back))
        feats_t = torch.from_numpy(feats).to(device).index_select(0, torch.from_numpy(inverse).to(device))
        labels_t = torch.from_numpy(np.asarray(y[sel], dtype=np.int64)).to(device)
        for i in range(0, len(sel), batch_size):
            yield feats_t[i:i + batch_size], labels_t[i:i + batch_size]


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and an atomic rename (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path, after="the last saved epoch is kept; free space and rerun to resume")


def load_state(path: Path | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """A saved state whose config equals ``config``, else None (a stale state is ignored)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged state file only costs a restart
        return None
    return state if state.get("config") == config else None
