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


# Evaluation preprocessing per protocol (docs/protocols.md §3.2):
#   resize-crop: shorter side to round(size * 256 / 224) (bicubic), then a center crop of size x size - what
#                VISSL, DINO and MSN do on ImageNet (256 -> 224 at 224 px, 512 -> 448 at 448 px);
#   square:      resize to size x size (bicubic), no crop - CLEVR (a crop can remove objects) and the small
#                built-in datasets, whose images are already square.
EVAL_TRANSFORMS = ("resize-crop", "square")


def default_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def crop_resize(image_size: int) -> int:
    """The shorter-side size resize-crop resizes to before its center crop (224 -> 256, 448 -> 512)."""
    return round(image_size * 256 / 224)


def eval_transform_id(kind: str, image_size: int) -> str:
    """The transform's identity in cache keys and records (the square one keeps its former name, so
    caches built before resize-crop existed stay valid)."""
    if kind == "square":
        return f"resize{image_size}-bicubic-imagenetnorm"
    if kind == "resize-crop":
        return f"resize{crop_resize(image_size)}-centercrop{image_size}-bicubic-imagenetnorm"
    raise UserError(f"unknown eval transform '{kind}'; use one of {', '.join(EVAL_TRANSFORMS)}")


def eval_transform(kind: str, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform ``kind`` (see EVAL_TRANSFORMS) at the model's resolution."""
    eval_transform_id(kind, image_size)   # validates kind
    if kind == "square":
        return default_transform(image_size)
    return T.Compose([T.Resize(crop_resize(image_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageDataset(torch.utils.data.Dataset):
    """Subclasses implement ``load_image(i) -> PIL.Image`` and set ``targets``, ``classes``, ``identity``;
    ``eval_transform`` names the protocol's evaluation preprocessing (EVAL_TRANSFORMS)."""
    eval_transform: str = "square"

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
        self.eval_transform = base.eval_transform
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
