"""VTAB's CLEVR labels (``task_adaptation/data/clevr.py``), shared by the datasets and ``make-clevr``.

Count: number of objects - 3. Dist: d = min over objects of ``pixel_coords[2]``; label = the largest i with
thresholds[i] < d. VTAB compares in float32 (``tf.where((thrs - dist) < 0)`` on float32 coordinates), so we
do too: a depth a hair above a threshold in float64 can round onto it and stay in the lower bin.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

COUNT_CLASSES = [str(n) for n in range(3, 11)]
DIST_THRESHOLDS = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0], dtype=np.float32)
DIST_CLASSES = [f"({lo:g}, {hi:g}]" for lo, hi in zip(DIST_THRESHOLDS[:-1], DIST_THRESHOLDS[1:])]


def count_label(n_objects: int) -> int:
    return int(n_objects) - 3


def min_depth(objects: Sequence[dict]) -> float:
    return min(float(o["pixel_coords"][2]) for o in objects)


def dist_label(depth: float) -> int:
    """Ordinal Dist bin of the nearest object's depth ``depth`` (-1 when d <= 0, outside VTAB's range)."""
    below = np.flatnonzero(DIST_THRESHOLDS < np.float32(depth))
    return int(below[-1]) if len(below) else -1


def histogram(labels: Sequence[int], classes: list[str]) -> str:
    """One line per class: name, count, share and a bar."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    total = max(int(counts.sum()), 1)
    return "\n".join(f"  {name:>12s} {c:7d} {100 * c / total:5.1f}% {'#' * round(40 * c / total)}"
                     for name, c in zip(classes, counts))
