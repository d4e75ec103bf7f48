"""``fashion-mnist-sample``: a 7,000-image Fashion-MNIST sample shipped inside the package (3 MB), so the
demo checkpoint is evaluated on the data it was pretrained on, on every machine and offline.

It is exactly the seeded class-stratified subsets ``limit(fashion-mnist train, 5000, seed=1)`` and
``limit(fashion-mnist test, 2000, seed=1)`` (500 / 200 images per class), so a probe on the sample and on
the full dataset with those subsets gives the same number. ``write_sample`` regenerates the file from the
idx files; ``tests/test_datasets.py`` checks the shipped file against them where they are installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from . import register_dataset
from .base import ImageDataset, limit
from .builtin import FASHION_CLASSES, ArrayDataset, _check_split, fashion_mnist

SAMPLE_FILE = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-sample" / "fashion-mnist-sample.npz"
SAMPLE_SIZES = {"train": 5000, "test": 2000}
SAMPLE_SEED = 1


def sample_indices(full: ImageDataset, split: str) -> np.ndarray:
    """Row indices of the sample within the full split (the seeded stratified subset)."""
    return np.asarray(limit(full, SAMPLE_SIZES[split], seed=SAMPLE_SEED).indices)


def write_sample(out: Path = SAMPLE_FILE, root: str | None = None) -> Path:
    """Regenerate the sample from the Fashion-MNIST idx files (``root`` or the default locations)."""
    arrays = {}
    for split in SAMPLE_SIZES:
        full = fashion_mnist(root, split)
        idx = sample_indices(full, split)
        arrays[f"{split}_images"] = full.images[idx]
        arrays[f"{split}_labels"] = full.targets[idx].astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


@register_dataset("fashion-mnist-sample")
def fashion_mnist_sample(root: str | None = None, split: str = "train") -> ImageDataset:
    """Shipped Fashion-MNIST sample: 5,000 train / 2,000 test images (seed-1 stratified subsets), MIT licence."""
    _check_split(split, tuple(SAMPLE_SIZES), "fashion-mnist-sample")
    if root:
        raise UserError("dataset 'fashion-mnist-sample' ships with the package and takes no root; "
                        "use 'fashion-mnist' for idx files in a folder")
    if not SAMPLE_FILE.is_file():
        raise UserError(f"the Fashion-MNIST sample is missing from this installation ({SAMPLE_FILE})")
    with np.load(SAMPLE_FILE) as data:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].astype(np.int64)
    return ArrayDataset(images, labels, FASHION_CLASSES,
                        {"dataset": "fashion-mnist-sample", "split": split, "n": len(labels),
                         "source": f"fashion-mnist {split}, stratified subset of {SAMPLE_SIZES[split]}, "
                                   f"seed {SAMPLE_SEED}"})
