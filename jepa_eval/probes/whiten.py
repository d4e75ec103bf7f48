"""PCA whitening of frozen features, the linear probe's optional second input (``LinearConfig.inputs``).

Why: SGD on a linear head converges at the rate of the smallest curvature it needs. Small encoders (the demo
ViT, a random init) put real class information in directions whose variance is 1e-4 to 1e-6 of the largest,
even after per-dimension standardization (BatchNorm), so a few thousand SGD steps stop far from the converged
logistic regression. Whitening, ``z = (x - mean) @ P`` with ``P = (C + s * tr(C) / D * I)^(-1/2)`` (PCA basis,
covariance ``C`` of the fit rows shrunk towards its mean eigenvalue by ``s``), makes every direction equally
fast. A head on ``z`` is still an affine function of ``x``, so the probe measures the same thing - linear
separability - only better optimized; weight decay on ``z`` penalises the head's output variance rather than
its raw weights, and the seeded hold-out chooses between the raw and the whitened grid.

The statistics are streamed in float64 over the fit rows of the (possibly memory-mapped) features; the
whitened features are never stored: ``Whitening.view`` wraps an array and whitens each chunk on read."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import UserError
from .stream import chunk_rows, iter_blocks


class Whitening:
    """``x -> (x - mean) @ proj``: centred in float64 (features sit far from the origin), projected in float32
    (rms error <= 2e-4 of a whitened unit, measured on the demo checkpoint's features and on raw pixels).
    The linear algebra runs in torch, so it uses the threads torch is given, like the rest of the probe."""

    def __init__(self, mean: np.ndarray, proj: np.ndarray) -> None:
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
        self.proj = torch.as_tensor(np.asarray(proj), dtype=torch.float32)

    @classmethod
    def fit(cls, x: np.ndarray, rows: np.ndarray, shrinkage: float = 1e-6, chunk: int | None = None) -> "Whitening":
        """Mean and shrunk covariance of ``x[rows]`` (``rows`` sorted), one chunk of the file at a time."""
        rows = np.asarray(rows)
        if len(rows) < 2:
            raise UserError("whitening needs at least two training rows")
        dim = int(np.prod(x.shape[1:]))
        shift = total = second = None
        for feats, _ in iter_blocks(x, rows, chunk or chunk_rows(x)):
            f = torch.from_numpy(feats.reshape(len(feats), dim)).double()
            if shift is None:       # accumulate around a first guess of the mean: no cancellation in float64
                shift, total = f.mean(0), torch.zeros(dim, dtype=torch.float64)
                second = torch.zeros(dim, dim, dtype=torch.float64)
            f -= shift
            total += f.sum(0)
            second += f.T @ f
        centre = total / len(rows)
        cov = second / len(rows) - torch.outer(centre, centre)
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        evals = evals.clamp(min=0.0)
        if evals.max() <= 0:
            raise UserError("cannot whiten constant features")
        floor = shrinkage * evals.mean()
        return cls((shift + centre).numpy(), (evecs / torch.sqrt(evals + floor)).numpy())

    def tensor(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.double() - self.mean.to(xb.device)).float() @ self.proj.to(xb.device)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.tensor(torch.from_numpy(np.array(block, dtype=np.float64))).numpy()

    def view(self, x: np.ndarray) -> "WhitenedView":
        return WhitenedView(x, self)

    def batches(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Whiten a stream of (features, labels) mini-batches (e.g. features of augmented images)."""
        for xb, yb in batches:
            yield self.tensor(xb), yb


class WhitenedView:
    """A read-only stand-in for a [N, D] feature array whose row slices come back whitened (float32).
    The last block read is kept, so an epoch over data that fits one chunk whitens it only once."""

    dtype = np.dtype(np.float32)

    def __init__(self, x: np.ndarray, whitening: Whitening) -> None:
        self.x, self.whitening = x, whitening
        self.shape = (len(x), whitening.proj.shape[1])
        self._last: tuple[int, int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("a whitened view is read by row slices")
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise TypeError("a whitened view is read by contiguous row slices")
        if self._last is None or self._last[:2] != (start, stop):
            block = np.asarray(self.x[start:stop], dtype=np.float32)
            self._last = (start, stop, self.whitening(block.reshape(len(block), -1)))
        return self._last[2]
