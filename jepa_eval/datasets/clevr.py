"""CLEVR Count and Dist with VTAB's labels and splits, read from a CLEVR_v1.0 folder (the real dataset or
one rendered by ``jepa-eval make-clevr``).

Splits (VTAB, ``task_adaptation/data/clevr.py``): of the N CLEVR *train* scenes, ``train`` = the first
(90 N) // 100 (63,000 of 70,000), ``val`` = the rest, ``trainval`` = all; ``test`` = CLEVR's *val* scenes (CLEVR's
test split has no scenes); ``train800`` = train[:800], ``val200`` = val[:200], ``train800val200`` = both
(VTAB-1k). The same 90/10 rule applies to smaller generated sets. Scenes are taken in the scenes file's
order (VTAB's tfds copy orders its train split by tfds' own shuffling, so its first 63,000 differ).
Images are resized to the model input without cropping (a crop can remove objects); the only training
augmentation is a horizontal flip (``ClevrDataset.train_transform``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from ..clevr.labels import COUNT_CLASSES, DIST_CLASSES, count_label, dist_label
from ..errors import UserError
from . import register_dataset
from .base import IMAGENET_MEAN, IMAGENET_STD, ImageDataset

SPLITS = ("train", "val", "trainval", "test", "train800", "val200", "train800val200")
TRAIN_PERCENT = 90
MAKE_HINT = "render one with `jepa-eval make-clevr --out DIR` or download CLEVR_v1.0"


def flip_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Training transform for CLEVR: resize (no crop) + random horizontal flip + ImageNet normalization."""
    return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ClevrDataset(ImageDataset):
    #: the train-time augmentation VTAB / I-JEPA use on CLEVR
    augmentation = "hflip"

    def __init__(self, files: list[Path], targets: np.ndarray, classes: list[str], identity: dict) -> None:
        super().__init__(targets, classes, identity)
        self.files = files

    def train_transform(self, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
        return flip_transform(image_size)

    def load_image(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            img = Image.open(path)
            img.load()
        except FileNotFoundError:
            raise UserError(f"CLEVR image missing: {path} (listed in the scenes file)") from None
        except Exception as e:  # PIL raises many types for damaged files
            raise UserError(f"corrupt or unreadable CLEVR image {path}: {e}") from None
        return img


@dataclass
class _Scenes:
    files: list[str]
    n_objects: np.ndarray
    min_depth: np.ndarray


_SCENES: dict[tuple, _Scenes] = {}   # parsed scenes files by (path, mtime, size): the 70k-scene file is slow


def _root(root: str | None, name: str) -> Path:
    if not root:
        raise UserError(f"dataset '{name}' needs root=<CLEVR_v1.0 folder with scenes/ and images/>; {MAKE_HINT}")
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"CLEVR folder not found: {base}; {MAKE_HINT}")
    if not (base / "scenes").is_dir() and (base / "CLEVR_v1.0" / "scenes").is_dir():
        base = base / "CLEVR_v1.0"
    return base


def _read_scenes(path: Path, clevr_split: str) -> _Scenes:
    if not path.is_file():
        which = "the test split reads CLEVR's val scenes (make-clevr --n-val M)" if clevr_split == "val" else \
            "train, val and VTAB-1k splits read CLEVR's train scenes"
        raise UserError(f"CLEVR scenes file not found: {path} ({which}); {MAKE_HINT}")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _SCENES:
        return _SCENES[key]
    try:
        with open(path) as f:
            scenes = json.load(f)["scenes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read CLEVR scenes from {path}: {type(e).__name__}: {e}") from None
    files, counts, depths = [], [], []
    for i, s in enumerate(scenes):
        objects = s.get("objects") or []
        try:
            depths.append(min(float(o["pixel_coords"][2]) for o in objects) if objects else np.nan)
        except (KeyError, IndexError, TypeError, ValueError):
            raise UserError(f"{path}: scene {i} ({s.get('image_filename', '?')}) has an object without "
                            f"pixel_coords [x, y, depth]; CLEVR_v1.0 scene files have them") from None
        counts.append(len(objects))
        files.append(s.get("image_filename") or f"CLEVR_{clevr_split}_{int(s.get('image_index', i)):06d}.png")
    _SCENES.clear()   # keep one file: a new one usually replaces it
    _SCENES[key] = _Scenes(files, np.array(counts), np.array(depths))
    return _SCENES[key]


def _indices(split: str, n: int, source: Path) -> np.ndarray:
    n_train = TRAIN_PERCENT * n // 100
    ranges = {"train": [(0, n_train)], "val": [(n_train, n)], "trainval": [(0, n)], "test": [(0, n)],
              "train800": [(0, 800)], "val200": [(n_train, n_train + 200)],
              "train800val200": [(0, 800), (n_train, n_train + 200)]}[split]
    # VTAB-1k takes fixed counts: refuse a set too small rather than return fewer scenes
    if ("800" in split and n_train < 800) or ("200" in split and n - n_train < 200):
        raise UserError(f"split '{split}' needs 800 train and 200 val scenes, but {source} has {n} scenes "
                        f"({n_train} train = first {TRAIN_PERCENT}%, {n - n_train} val); "
                        f"render at least 2,000 train scenes")
    return np.concatenate([np.arange(lo, hi) for lo, hi in ranges])


def _load(name: str, root: str | None, split: str, task: str) -> ClevrDataset:
    if split not in SPLITS:
        raise UserError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(SPLITS)}")
    base = _root(root, name)
    clevr_split = "val" if split == "test" else "train"
    path = base / "scenes" / f"CLEVR_{clevr_split}_scenes.json"
    scenes = _read_scenes(path, clevr_split)
    idx = _indices(split, len(scenes.files), path)
    if task == "count":
        targets = np.array([count_label(c) for c in scenes.n_objects[idx]])
        bad, what, classes = (targets < 0) | (targets >= len(COUNT_CLASSES)), "object counts", COUNT_CLASSES
    else:
        targets = np.array([dist_label(d) for d in scenes.min_depth[idx]])
        bad, what, classes = (targets < 0) | (targets >= len(DIST_CLASSES)), "nearest depths", DIST_CLASSES
    if bad.any():
        i = int(idx[np.flatnonzero(bad)[0]])
        value = scenes.n_objects[i] if task == "count" else scenes.min_depth[i]
        raise UserError(f"{path}: scene {i} is outside VTAB's {what} ({value}); expected 3-10 objects "
                        f"with depths in (0, 100]")
    image_dir = base / "images" / clevr_split
    if not image_dir.is_dir():
        raise UserError(f"CLEVR image folder not found: {image_dir}; {MAKE_HINT}")
    st = path.stat()
    identity = {"dataset": name, "split": split, "root": str(base.resolve()), "n": len(idx),
                "scenes_file": f"{st.st_size}-{st.st_mtime_ns}"}
    return ClevrDataset([image_dir / scenes.files[i] for i in idx], targets, classes, identity)


@register_dataset("clevr-count")
def clevr_count(root: str | None = None, split: str = "train") -> ImageDataset:
    """CLEVR Count (VTAB): number of objects - 3 (8 classes); root = a CLEVR_v1.0 folder."""
    return _load("clevr-count", root, split, "count")


@register_dataset("clevr-dist")
def clevr_dist(root: str | None = None, split: str = "train") -> ImageDataset:
    """CLEVR Dist (VTAB): depth bin of the nearest object (6 ordinal classes); root = a CLEVR_v1.0 folder."""
    return _load("clevr-dist", root, split, "dist")
