"""Datasets by name: ``get_dataset(name, root=None, split=...)`` -> a torch Dataset with ``.targets``
and ``.classes``. Each plug-in module of this package registers its loaders with ``register_dataset``."""
from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .base import ImageDataset, default_transform, limit

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset", "jepa_eval.datasets")
register_dataset = DATASETS.register


def get_dataset(name: str, root: str | None = None, split: str = "train", image_size: int = 224,
                max_samples: int | None = None, seed: int = 0) -> ImageDataset:
    """Load a dataset split, images resized to ``image_size`` and normalized; optionally a seeded,
    class-stratified subset of ``max_samples`` images."""
    ds = DATASETS.get(name)(root=root, split=split)
    ds.set_transform(default_transform(image_size), f"resize{image_size}-bicubic-imagenetnorm")
    return limit(ds, max_samples, seed) if max_samples else ds


__all__ = ["get_dataset", "register_dataset", "DATASETS", "ImageDataset", "limit"]
