"""Augmented views of a dataset with a fixed random augmentation per (seed, view, image).

``AugmentedView(ds, view, seed, size)`` is view number ``view`` of every image of ``ds``: the crop and flip
of image ``i`` are drawn from a generator seeded with ``(seed, view, i)``, never from global random state,
so a view is bit-identical across runs, data-loader workers and resumed extractions, and can be cached like
any other transform (its ``transform_id`` names the view and seed). Views of one seed do not depend on how
many are asked for: going from 4 to 8 views reuses the first 4 cache entries.

The augmentation is the dataset's own when it declares one (``augmentation = "hflip"``: resize to a square +
horizontal flip, e.g. CLEVR and CIFAR-100), else VISSL's linear-probe default: RandomResizedCrop(scale 0.08-1,
ratio 3/4-4/3, bicubic) + horizontal flip. Images are normalized with the ImageNet mean/std."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .base import IMAGENET_MEAN, IMAGENET_STD, ImageDataset

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def augmentation_of(ds: ImageDataset) -> str:
    """"hflip" when the dataset (or the dataset a subset wraps) asks for flips only, else "rrc-hflip"."""
    while ds is not None:
        if getattr(ds, "augmentation", None):
            return str(ds.augmentation)
        ds = getattr(ds, "base", None)
    return "rrc-hflip"


def crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop drawn from ``rng`` (torchvision's algorithm: ten
    tries at a random area and log-uniform aspect ratio, then a center crop at the clamped ratio)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class AugmentedView(ImageDataset):
    def __init__(self, base: ImageDataset, view: int, seed: int, image_size: int) -> None:
        super().__init__(base.targets, base.classes, base.identity)
        self.base, self.view, self.seed, self.size = base, int(view), int(seed), int(image_size)
        self.kind = augmentation_of(base)
        aug = "resize-hflip" if self.kind == "hflip" else f"rrc{SCALE[0]:g}-{SCALE[1]:g}-hflip"
        self.transform_id = f"view{self.view}-seed{self.seed}-{aug}{self.size}-bicubic-imagenetnorm"

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(index)

    def file_names(self) -> list[str] | None:
        return self.base.file_names()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load_image(index).convert("RGB")
        rng = np.random.default_rng([self.seed, self.view, int(index)])
        size = [self.size, self.size]
        if self.kind == "hflip":
            img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC)
        else:
            top, left, h, w = crop_box(rng, *img.size)
            img = TF.resized_crop(img, top, left, h, w, size, interpolation=InterpolationMode.BICUBIC)
        if rng.random() < 0.5:
            img = TF.hflip(img)
        x: torch.Tensor = TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
        return x, int(self.targets[index])
