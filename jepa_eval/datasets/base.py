"""The dataset base class: lazy image access, targets, classes and an identity for cache keys."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageDataset(torch.utils.data.Dataset):
    """Subclasses implement ``load_image(i) -> PIL.Image`` and set ``targets``, ``classes``, ``identity``."""

    def __init__(self, targets: np.ndarray, classes: list[str], identity: dict[str, Any]) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.identity = dict(identity)
        self.transform: Callable | None = None
        self.transform_id = "none"

    def set_transform(self, transform: Callable, transform_id: str) -> None:
        self.transform, self.transform_id = transform, transform_id

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def file_names(self) -> list[str] | None:
        """Image file names in row order (for subset files), or None when images are not files."""
        return None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load_image(index).convert("RGB")  # grayscale becomes 3 channels
        return (self.transform(img) if self.transform else img), int(self.targets[index])


class SubsetDataset(ImageDataset):
    def __init__(self, base: ImageDataset, indices: np.ndarray, note: dict[str, Any]) -> None:
        super().__init__(base.targets[indices], base.classes, {**base.identity, **note})
        self.base, self.indices = base, np.asarray(indices)
        self.transform, self.transform_id = base.transform, base.transform_id

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.indices[index]))

    def file_names(self) -> list[str] | None:
        names = self.base.file_names()
        return None if names is None else [names[i] for i in self.indices]


def limit(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """A seeded class-stratified subset of ``n`` images (round-robin over classes), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise UserError(f"max_samples must be positive, got {n}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(ds.targets == c)) for c in np.unique(ds.targets)]
    order = [idx for rank in range(max(map(len, per_class))) for pc in per_class if rank < len(pc)
             for idx in [pc[rank]]]
    return SubsetDataset(ds, np.sort(np.array(order[:n])), {"max_samples": n, "subset_seed": seed})
