"""Datasets that need no download: scikit-learn's digits, Fashion-MNIST idx files, ImageFolder trees."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from . import register_dataset
from .base import ImageDataset

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 array [N, H, W] or [N, H, W, 3]."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, classes: list[str], identity: dict) -> None:
        super().__init__(targets, classes, identity)
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in allowed:
        raise UserError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(allowed)}")


@register_dataset("digits")
def digits(root: str | None = None, split: str = "train") -> ImageDataset:
    """scikit-learn's 8x8 digits (1,797 images), a fixed seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits
    _check_split(split, ("train", "test"), "digits")
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_test = len(images) // 5
    idx = np.sort(order[n_test:] if split == "train" else order[:n_test])
    return ArrayDataset(images[idx], data.target[idx], [str(d) for d in range(10)],
                        {"dataset": "digits", "split": split, "n": len(idx)})


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _fashion_dirs(root: str | None) -> list[Path]:
    if root:  # a root the user gave is the only place looked in: never silently another copy
        return [Path(root)]
    return [Path("/usr/share/datasets/fashion-mnist")]   # Debian's dataset-fashion-mnist


def fashion_mnist_available(root: str | None = None) -> bool:
    return any((d / "train-images-idx3-ubyte.gz").exists() or (d / "train-images-idx3-ubyte").exists()
               for d in _fashion_dirs(root))


@register_dataset("fashion-mnist")
def fashion_mnist(root: str | None = None, split: str = "train") -> ImageDataset:
    """Fashion-MNIST from the standard idx(.gz) files (60,000 train / 10,000 test)."""
    _check_split(split, ("train", "test"), "fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    dirs = _fashion_dirs(root)
    for d in dirs:
        for suffix in (".gz", ""):
            img, lab = d / f"{prefix}-images-idx3-ubyte{suffix}", d / f"{prefix}-labels-idx1-ubyte{suffix}"
            if img.exists() and lab.exists():
                images, labels = _read_idx(img), _read_idx(lab)
                if len(images) != len(labels):
                    raise UserError(f"{d}: {len(images)} images but {len(labels)} labels")
                return ArrayDataset(images, labels, FASHION_CLASSES,
                                    {"dataset": "fashion-mnist", "split": split, "n": len(labels),
                                     "root": str(d.resolve())})
    looked = ", ".join(str(d) for d in dirs)
    raise UserError(f"fashion-mnist not found (looked in {looked}); install Debian's dataset-fashion-mnist "
                    f"(apt-get install dataset-fashion-mnist) or put the idx files in $JEPA_EVAL_DATA/fashion-mnist")


class FolderDataset(ImageDataset):
    eval_transform = "resize-crop"   # ImageNet-style photos of any aspect ratio: shorter side + center crop

    def __init__(self, files: list[Path], targets: list[int], classes: list[str], identity: dict) -> None:
        super().__init__(np.array(targets), classes, identity)
        self.files = files

    def load_image(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            img = Image.open(path)
            img.load()
        except Exception as e:  # PIL raises many types for damaged files
            raise UserError(f"corrupt or unreadable image {path}: {e}; remove or replace it") from None
        return img

    def file_names(self) -> list[str]:
        return [p.name for p in self.files]


def _class_dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir())


@register_dataset("imagefolder")
def imagefolder(root: str | None = None, split: str = "train") -> ImageDataset:
    """ImageNet layout: ``root/{train,val}/<class>/<image>``.

    Labels come from ONE class index for every split: the class folders of ``root/train`` (or of the
    split itself when there is no ``train/``). A split may lack classes (its labels stay right) but may
    not hold classes the index lacks: per-split indices would shift every label of a split missing one
    class and record a wrong number without any error."""
    if not root:
        raise UserError("dataset 'imagefolder' needs a root folder (root/train/<class>/..., root/val/...)")
    base = Path(root) / split
    if not base.is_dir():
        raise UserError(f"imagefolder split folder not found: {base}")
    index_dir = Path(root) / "train" if (Path(root) / "train").is_dir() else base
    classes = _class_dirs(index_dir)
    if not classes:
        raise UserError(f"no class folders in {index_dir}")
    here = _class_dirs(base)
    extra = [c for c in here if c not in set(classes)]
    if extra:
        raise UserError(f"imagefolder split {base} has class folder(s) that {index_dir} lacks: "
                        f"{', '.join(extra[:5])}; labels must come from one class index, so add them to "
                        f"{index_dir.name}/ or remove them")
    files, targets, empty = [], [], []
    for label, cls in enumerate(classes):
        if cls not in here:
            continue   # absent from this split: the other classes keep their labels
        found = sorted(p for p in (base / cls).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not found:
            empty.append(cls)
        files += found
        targets += [label] * len(found)
    if empty:
        raise UserError(f"class folder(s) without images in {base}: {', '.join(empty[:5])}")
    return FolderDataset(files, targets, classes, {"dataset": "imagefolder", "split": split,
                                                    "root": str(base.resolve()), "n": len(files),
                                                    "class_index": str(index_dir.resolve())})
