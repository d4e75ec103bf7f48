"""Pretraining data: any ``jepa_eval`` dataset, RandomResizedCrop(0.3-1) + normalize (nothing else).

Randomness is a pure function of (seed, epoch, position in the epoch): the sampler's order comes from a
seeded permutation and each crop from a per-sample seed, so a run resumed mid-epoch sees exactly the
batches an uninterrupted run would have seen, with any number of loader workers."""
from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import functional as TF

from jepa_eval.datasets import DATASETS, get_dataset
from jepa_eval.datasets.base import IMAGENET_MEAN, IMAGENET_STD, ImageDataset

from jepa_eval.errors import UserError, did_you_mean

from .config import DataConfig


class SeededRandomResizedCrop:
    """RandomResizedCrop(scale, ratio 3/4-4/3) + ToTensor + Normalize, drawing from a per-sample seed.

    torchvision's transform draws from the global torch RNG, which is process-wide and costly to reseed
    per sample (``torch.manual_seed`` also seeds CUDA); here a ``random.Random(seed)`` picks the box
    (torchvision's algorithm: 10 tries, then a center crop) and torchvision does the resizing."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.3, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        self.std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]

    def box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        top, left, h, w = self.box(img.width, img.height, random.Random(seed))
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=TF.InterpolationMode.BILINEAR)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((x - self.mean) / self.std)


class CropDataset(Dataset):
    """Wraps an ImageDataset; ``ds[(index, sample_seed)]`` returns the seeded augmented image only."""

    def __init__(self, base: ImageDataset, transform: SeededRandomResizedCrop) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, sample_seed = key
        return self.transform(self.base.load_image(index).convert("RGB"), sample_seed)


class EpochSampler(Sampler):
    """A seeded permutation per epoch, split across ranks, full batches only, starting at ``start_batch``.
    Yields ``(index, sample_seed)``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = n // (batch_size * world_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.batches_per_epoch * self.batch_size * self.world_size]
        mine = order[self.rank::self.world_size]
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for pos in range(self.start_batch * self.batch_size, len(mine)):
            yield int(mine[pos]), (base + pos * self.world_size + self.rank) % (2 ** 63)


def build_dataset(cfg: DataConfig, seed: int = 0) -> CropDataset:
    if cfg.dataset not in DATASETS:
        raise UserError(f"this config trains on dataset '{cfg.dataset}', which this installation does not "
                        f"provide{did_you_mean(cfg.dataset, DATASETS.names())}; available: {', '.join(DATASETS.names())}")
    base = get_dataset(cfg.dataset, cfg.root, split=cfg.split, image_size=cfg.img_size,
                       max_samples=cfg.max_samples, seed=seed)
    return CropDataset(base, SeededRandomResizedCrop(cfg.img_size, cfg.crop_scale))


def build_loader(ds: CropDataset, cfg: DataConfig, sampler: EpochSampler) -> DataLoader:
    # the workers' base seed comes from a local generator, so a run leaves the caller's RNG alone (the crops
    # do not depend on it: each is seeded by its sample seed)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False,
                      generator=torch.Generator().manual_seed(sampler.seed * 1_000_003 + sampler.epoch))
