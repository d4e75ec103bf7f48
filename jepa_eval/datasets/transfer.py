"""Transfer datasets of the I-JEPA paper's Tables 3 and 5: CIFAR-100, Places205 and iNaturalist 2018.

Layouts read (``root`` given by the battery or ``--root NAME=DIR``):

- ``cifar100``: the "python version" of CIFAR-100, ``root/cifar-100-python/{train,test,meta}`` (or ``root``
  pointing at ``cifar-100-python`` itself). Fine labels (100 classes), names from ``meta``. Splits: train
  (50,000), test (10,000). The pickles are read with an unpickler that only rebuilds numpy arrays, so a
  doctored file cannot run code.
- ``places205``: the official release, ``root/trainvalsplit_places205/{train,val}_places205.csv`` (lines
  ``a/abbey/gsun_....jpg 0``) with images under ``root/data/vision/torralba/deeplearning/images256/``;
  class names from the image folders (``abbey``, ``field/cultivated``). Fallback: class folders
  ``root/{train,val}/<class>/<image>``. Splits: train, val.
- ``inat18``: the official competition files, ``root/{train2018,val2018}.json`` (COCO style: images,
  annotations, categories) with images at ``root/<file_name>`` (``train_val2018/<super>/<id>/<x>.jpg``);
  label = rank of ``category_id`` among the categories' ids (0..8141), names from the categories. Fallback:
  class folders ``root/{train,val}/<class>/<image>``. Splits: train (437,513), val (24,426).

Evaluation transform (``eval_transform``: square | resize-crop, the values of a battery entry's ``transform``):
CIFAR-100 images (32 px) are resized to the model's square input, as VISSL's CIFAR-100 config and the paper
do ("resize the images to 224 x 224"); Places205 and iNat18 are ImageNet-style photos (VISSL: Resize(256) +
CenterCrop(224)). Training augmentation of the augmented linear recipes (``views``, ``paper``): CIFAR-100
resize + horizontal flip (VISSL's config); the others RandomResizedCrop + flip.
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from . import register_dataset
from .base import ImageDataset
from .builtin import ArrayDataset, FolderDataset, imagefolder

CIFAR_DIR = "cifar-100-python"
PLACES_LISTS = "trainvalsplit_places205"
PLACES_IMAGES = Path("data/vision/torralba/deeplearning/images256")
_PARSED: dict[tuple, Any] = {}   # parsed list/annotation files by (path, mtime, size); the big ones are slow


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise UserError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(allowed)}")


def _need_root(name: str, root: str | None, layout: str) -> Path:
    if not root:
        raise UserError(f"dataset '{name}' needs root=<{layout}>")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"{name} folder not found: {base} (expected {layout})")
    return base


def _cached(path: Path, parse: Callable[[Path], Any]) -> Any:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        if len(_PARSED) >= 4:   # a train and a val file of one dataset at a time, with room to switch
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = parse(path)
    return _PARSED[key]


def _file_tag(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


# -- CIFAR-100 -------------------------------------------------------------------------------------

class _ArraysOnly(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numpy arrays; refuses every other global (no code runs)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' (only numpy arrays are allowed)")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()   # latin1: the files were written by Python 2
    except FileNotFoundError:
        raise UserError(f"CIFAR-100 file missing: {path}") from None
    except Exception as e:  # truncated files raise EOFError, UnpicklingError, ValueError, ...
        raise UserError(f"cannot read CIFAR-100 file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR-100 python pickle (a dict), found {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = _read_cifar_pickle(path)
    try:
        raw, labels = np.asarray(data["data"], dtype=np.uint8), np.asarray(data["fine_labels"], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"{path} has no {e} entry; is it the CIFAR-100 python version?") from None
    if raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32 or len(raw) != len(labels):
        raise UserError(f"{path}: expected data [N, 3072] and N fine labels, found {raw.shape} and {len(labels)}")
    # rows are 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    return np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


class CifarDataset(ArrayDataset):
    eval_transform = "square"   # 32 px images: resize to the model's input (VISSL, the paper's Appendix A.2)
    augmentation = "hflip"     # VISSL's CIFAR-100 linear config trains on Resize + RandomHorizontalFlip

    def train_transform(self, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
        from .clevr import flip_transform
        return flip_transform(image_size)


@register_dataset("cifar100")
def cifar100(root: str | None = None, split: str = "train") -> ImageDataset:
    """CIFAR-100 python pickles (fine labels, 100 classes); root = the folder holding cifar-100-python/."""
    _check_split("cifar100", split, ("train", "test"))
    base = _need_root("cifar100", root, "a folder with cifar-100-python/{train,test,meta}")
    folder = base if (base / "meta").is_file() and not (base / CIFAR_DIR).is_dir() else base / CIFAR_DIR
    if not folder.is_dir():
        hint = (f"; extract {base / 'cifar-100-python.tar.gz'} there first"
                if (base / "cifar-100-python.tar.gz").exists() else "")
        raise UserError(f"CIFAR-100 folder not found: {folder} (the python version: cifar-100-python/"
                        f"{{train,test,meta}}){hint}")
    meta = _cached(folder / "meta", _read_cifar_pickle) if (folder / "meta").is_file() else None
    if meta is None or "fine_label_names" not in meta:
        raise UserError(f"CIFAR-100 meta file missing or without fine_label_names: {folder / 'meta'}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    path = folder / split
    if not path.is_file():
        raise UserError(f"CIFAR-100 file missing: {path}")
    images, labels = _cached(path, _cifar_split)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"{path}: fine labels outside 0..{len(classes) - 1}")
    return CifarDataset(images, labels, classes, {"dataset": "cifar100", "split": split, "n": len(labels),
                                                  "root": str(folder.resolve()), "file": _file_tag(path)})


# -- folder fallback shared by Places205 and iNat18 -------------------------------------------------

class PhotoFolderDataset(FolderDataset):
    eval_transform = "resize-crop"   # ImageNet-style photos: shorter side + center crop (VISSL's test transform)


class UnderRoot(Sequence):
    """The paths ``root / rel[i]``, built on access: 2.45M Path objects (Places205 train) would take ~1 GB."""

    def __init__(self, root: Path, rel: list[str]) -> None:
        self.root, self.rel = root, rel

    def __len__(self) -> int:
        return len(self.rel)

    def __getitem__(self, i):  # type: ignore[override]
        return [self.root / r for r in self.rel[i]] if isinstance(i, slice) else self.root / self.rel[i]


def _class_folders(name: str, base: Path, split: str) -> ImageDataset:
    ds = imagefolder(str(base), split)
    identity = {**ds.identity, "dataset": name, "layout": "class-folders"}
    return PhotoFolderDataset(ds.files, list(ds.targets), ds.classes, identity)


# -- Places205 ---------------------------------------------------------------------------------------

def _read_places_list(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    files, labels = [], []
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f, delimiter=" "), 1):
                row = [c for c in row if c]
                if not row:
                    continue
                if len(row) != 2 or not row[1].isdigit():
                    raise UserError(f"{path}, line {i}: expected '<relative/image/path> <label>', got {' '.join(row)!r}")
                files.append(row[0])
                labels.append(int(row[1]))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the Places205 list {path}: {e}") from None
    if not files:
        raise UserError(f"the Places205 list {path} is empty")
    labels_arr = np.array(labels, dtype=np.int64)
    return files, labels_arr, _places_classes(files, labels_arr, path)


def _places_classes(files: list[str], labels: np.ndarray, path: Path) -> list[str]:
    """Class names from the image folders ('a/abbey/x.jpg' -> 'abbey', 'f/field/cultivated/x.jpg' -> 'field/cultivated')."""
    n = int(labels.max()) + 1
    names: list[str | None] = [None] * n
    for rel, y in zip(files, labels):
        if names[y] is None:
            parts = rel.split("/")
            names[y] = "/".join(parts[1:-1]) if len(parts) > 2 else "/".join(parts[:-1]) or str(y)
    missing = [str(i) for i, c in enumerate(names) if c is None]
    if missing:
        raise UserError(f"{path}: no images for label(s) {', '.join(missing[:5])}; labels must be 0..{n - 1}")
    return names  # type: ignore[return-value]


@register_dataset("places205")
def places205(root: str | None = None, split: str = "train") -> ImageDataset:
    """Places205: the official list files + images256 tree, or class folders root/{train,val}/<class>/."""
    _check_split("places205", split, ("train", "val"))
    layout = (f"the Places205 release: {PLACES_LISTS}/{{train,val}}_places205.csv and {PLACES_IMAGES}/, "
              f"or class folders train/<class>/, val/<class>/")
    base = _need_root("places205", root, layout)
    lst = base / PLACES_LISTS / f"{split}_places205.csv"
    if not lst.is_file():
        if (base / split).is_dir():
            return _class_folders("places205", base, split)
        raise UserError(f"Places205 list not found: {lst} (expected {layout})")
    images = base / PLACES_IMAGES
    if not images.is_dir():
        raise UserError(f"Places205 image folder not found: {images} (the images256 tree of the release)")
    files, labels, classes = _cached(lst, _read_places_list)
    if not (images / files[0]).is_file():  # a wrong root fails here, not hours into an extraction
        raise UserError(f"Places205 image missing: {images / files[0]} (listed in {lst})")
    return PhotoFolderDataset(UnderRoot(images, files), labels, classes,
                              {"dataset": "places205", "split": split, "n": len(files),
                               "root": str(base.resolve()), "list": _file_tag(lst)})


# -- iNaturalist 2018 ----------------------------------------------------------------------------------

def _read_inat(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    try:
        with open(path) as f:
            ann = json.load(f)
        cats = sorted(ann["categories"], key=lambda c: int(c["id"]))
        rank = {int(c["id"]): i for i, c in enumerate(cats)}
        label_of = {int(a["image_id"]): int(a["category_id"]) for a in ann["annotations"]}
        images = [(int(im["id"]), str(im["file_name"])) for im in ann["images"]]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read iNat18 annotations {path}: {type(e).__name__}: {e}") from None
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a COCO-style iNat18 annotation file (images, annotations, categories): "
                        f"missing {e}") from None
    files, labels = [], []
    for image_id, name in images:
        if image_id not in label_of:
            raise UserError(f"{path}: image {image_id} ({name}) has no annotation")
        if label_of[image_id] not in rank:
            raise UserError(f"{path}: image {image_id} has category {label_of[image_id]}, which is not in 'categories'")
        files.append(name)
        labels.append(rank[label_of[image_id]])
    if not files:
        raise UserError(f"{path} lists no images")
    return files, np.array(labels, dtype=np.int64), [str(c.get("name", c["id"])) for c in cats]


@register_dataset("inat18")
def inat18(root: str | None = None, split: str = "train") -> ImageDataset:
    """iNaturalist 2018: the official {train,val}2018.json + train_val2018/ images, or class folders."""
    _check_split("inat18", split, ("train", "val"))
    layout = "the iNat 2018 release: train2018.json, val2018.json and train_val2018/, or class folders train/, val/"
    base = _need_root("inat18", root, layout)
    path = base / f"{split}2018.json"
    if not path.is_file():
        if (base / split).is_dir():
            return _class_folders("inat18", base, split)
        raise UserError(f"iNat18 annotations not found: {path} (expected {layout})")
    files, labels, classes = _cached(path, _read_inat)
    if not (base / files[0]).is_file():  # a wrong root fails here, not hours into an extraction
        raise UserError(f"iNat18 image missing: {base / files[0]} (listed in {path}); root must hold train_val2018/")
    return PhotoFolderDataset(UnderRoot(base, files), labels, classes,
                              {"dataset": "inat18", "split": split, "n": len(files), "root": str(base.resolve()),
                               "annotations": _file_tag(path)})
