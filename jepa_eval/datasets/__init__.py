"""Datasets by name: ``get_dataset(name, root=None, split=...)`` -> a torch Dataset with ``.targets``
and ``.classes``. Each plug-in module of this package registers its loaders with ``register_dataset``."""
from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .base import EVAL_TRANSFORMS, ImageDataset, eval_transform, eval_transform_id, limit

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset", "jepa_eval.datasets")
register_dataset = DATASETS.register


def get_dataset(name: str, root: str | None = None, split: str = "train", image_size: int = 224,
                max_samples: int | None = None, seed: int = 0, transform: str | None = None) -> ImageDataset:
    """Load a dataset split under its evaluation transform at ``image_size`` (``transform``: one of
    EVAL_TRANSFORMS, default the dataset's own: resize-crop for image folders, square otherwise);
    optionally a seeded, class-stratified subset of ``max_samples`` images."""
    ds = DATASETS.get(name)(root=root, split=split)
    kind = transform or ds.eval_transform
    ds.set_transform(eval_transform(kind, image_size), eval_transform_id(kind, image_size))
    ds.eval_transform = kind
    return limit(ds, max_samples, seed) if max_samples else ds


__all__ = ["get_dataset", "register_dataset", "DATASETS", "EVAL_TRANSFORMS", "ImageDataset", "limit"]
