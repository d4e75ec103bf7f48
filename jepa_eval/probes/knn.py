"""Weighted k-NN classification (DINO protocol) on L2-normalized features: a FAISS flat index, or on CPU
the streaming torch path of ``knn_stream`` when a float32 copy of the training set would not fit
comfortably in memory (see ``choose_knn_backend``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError

BACKENDS = ("auto", "faiss", "streaming")
# The FAISS path builds a float32 copy of the whole training set, and while its storage grows FAISS briefly
# holds old and new buffers: on 1.28 M x 1280 (a 6.1 GiB copy) it peaked at 14 GiB RSS, ~2x the copy plus
# the touched memmap pages. So on CPU it is only used while the copy is at most a quarter of the available
# memory (2x the copy then takes at most half); above that the streaming path (one chunk + the queries) runs.
FAISS_MEMORY_FRACTION = 0.25


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


def _cgroup_headroom(cgroup_file: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup"),
                     ) -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroups (SLURM jobs, containers), or
    None without one. Usage there counts page cache, so this errs on the small side."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":                                   # cgroup v2
            base, files = mount, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):               # cgroup v1
            base, files = mount / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        here = base / path.lstrip("/")
        for d in [here, *here.parents]:                         # the job's cgroup and every parent up to the mount
            if d != base and base not in d.parents:
                break
            try:
                limit, used = ((d / f).read_text().strip() for f in files)
                if limit != "max" and int(limit) < 2**60:       # v1 writes "no limit" as ~2**63
                    best = min(best if best is not None else 2**63, max(int(limit) - int(used), 0))
            except (OSError, ValueError):
                pass
    return best


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None when unknown: MemAvailable from
    /proc/meminfo (Linux; free + reclaimable page cache), else free pages (``SC_AVPHYS_PAGES``), capped
    by the cgroup limit's headroom (SLURM, containers)."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        found = cgroup if found is None else min(found, cgroup)
    return found


def _faiss_gpu() -> bool:
    import faiss
    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def choose_knn_backend(n_train: int, dim: int, backend: str = "auto",
                       memory_budget: int | None = None) -> tuple[str, str]:
    """``(backend, why)`` for ``knn_eval``: "faiss" or "streaming". "auto" takes FAISS on a GPU (faiss-gpu +
    CUDA: the index lives in GPU memory), and on CPU FAISS while the float32 copy of the training
    features (n_train x dim x 4 bytes) is at most ``FAISS_MEMORY_FRACTION`` of ``memory_budget`` (bytes;
    default: ``available_memory()``), else the streaming path. Both give the same accuracies."""
    if backend not in BACKENDS:
        raise UserError(f"k-NN backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend, f"backend={backend!r} requested"
    if _faiss_gpu():
        return "faiss", "FAISS GPU index (faiss-gpu + CUDA)"
    need = 4 * int(n_train) * int(dim)
    budget = available_memory() if memory_budget is None else int(memory_budget)
    if budget is None:
        return "faiss", "available memory unknown; FAISS as before"
    fits = need <= FAISS_MEMORY_FRACTION * budget
    why = (f"float32 train copy {need / 2**30:.3g} GiB {'<=' if fits else '>'} {FAISS_MEMORY_FRACTION:g} x "
           f"{budget / 2**30:.3g} GiB available")
    return ("faiss" if fits else "streaming"), why


def _gpu_index(dim: int):
    import faiss
    if _faiss_gpu():
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, dim), res
    return faiss.IndexFlatIP(dim), None


def knn_eval(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
             chunk: int = 65536, backend: str = "auto", memory_budget: int | None = None,
             verbose: bool = True) -> dict[int, float]:
    """Top-1 accuracy (percent) for each k. Votes are weighted by exp(sim / T); the class count comes
    from the training labels. Features may be memory-maps: they are normalized chunk by chunk.

    ``backend``: "faiss" (a flat inner-product index of the whole training set, on the GPU with faiss-gpu),
    "streaming" (``knn_stream.knn_eval_streaming``: reads the training set once, chunk by chunk, and keeps a
    running top-k; memory does not grow with the training set) or "auto" (``choose_knn_backend``, with
    ``memory_budget`` bytes instead of the measured available memory when given). One line on stderr says
    which path ran and why (``verbose=False`` silences it)."""
    train_y, test_y, ks, k_max = check_knn_inputs(train_x, train_y, test_x, test_y, ks)
    backend, why = choose_knn_backend(len(train_x), train_x.shape[1], backend, memory_budget)
    if verbose:
        print(f"jepa-eval: k-NN via {backend} ({why})", file=sys.stderr, flush=True)
    if backend == "streaming":
        from .knn_stream import knn_eval_streaming                 # it imports this module: import late
        return knn_eval_streaming(train_x, train_y, test_x, test_y, ks, temperature, chunk=chunk)
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
