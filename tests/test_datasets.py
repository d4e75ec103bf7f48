"""Built-in datasets: shapes, labels, lookup order and the errors users see."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from jepa_eval import UserError
from jepa_eval.datasets import get_dataset


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_digits_split_is_fixed_and_images_are_normalized_rgb():
    train, test = get_dataset("digits", split="train", image_size=24), get_dataset("digits", split="test", image_size=24)
    assert len(train) + len(test) == 1797 and len(test) == 359
    x, y = train[0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    rgb = x.numpy().transpose(1, 2, 0) * std + mean  # grayscale -> 3 identical channels before normalizing
    assert x.shape == (3, 24, 24) and np.allclose(rgb[..., 0], rgb[..., 2], atol=1e-5) and int(y) == train.targets[0]
    assert train.classes == [str(i) for i in range(10)]
    assert np.array_equal(get_dataset("digits", split="test").targets, test.targets)  # deterministic split


def test_fashion_mnist_reads_idx_files_from_root(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 28, 28)), np.arange(30) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    ds = get_dataset("fashion-mnist", root=str(tmp_path), split="test", image_size=28)
    assert len(ds) == 30 and list(ds.targets) == list(labels) and ds.classes[0] == "T-shirt/top"
    x, _ = ds[3]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = (x.numpy().transpose(1, 2, 0) * std + mean)[..., 0] * 255
    assert np.abs(pixels - images[3]).max() < 1.0


def test_missing_and_truncated_fashion_mnist(tmp_path):
    if not (tmp_path / "x").exists():
        with pytest.raises(UserError) as err:
            get_dataset("fashion-mnist", root=str(tmp_path / "nowhere"), split="bogus")
        assert "no split 'bogus'" in str(err.value)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    blob = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())[:-100]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(blob))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(UserError, match="truncated"):
        get_dataset("fashion-mnist", root=str(tmp_path), split="test")


def test_missing_dataset_error_says_where_it_looked(tmp_path, monkeypatch):
    import jepa_eval.datasets.builtin as builtin
    monkeypatch.setattr(builtin, "_fashion_dirs", lambda root: [tmp_path / "a", tmp_path / "data" / "fashion-mnist"])
    with pytest.raises(UserError) as err:
        get_dataset("fashion-mnist", split="train")
    msg = str(err.value)
    assert str(tmp_path / "a") in msg and "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def _image(path, value):
    Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(path)


def test_imagefolder_layout_and_errors(tmp_path):
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(n):
            _image(tmp_path / "train" / cls / f"{cls}_{i}.png", 40 * i)
    ds = get_dataset("imagefolder", root=str(tmp_path), split="train", image_size=8)
    assert ds.classes == ["cat", "dog"] and list(ds.targets) == [0, 0, 0, 1, 1] and ds[4][0].shape == (3, 8, 8)
    with pytest.raises(UserError, match="split folder not found"):
        get_dataset("imagefolder", root=str(tmp_path), split="val")
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(UserError, match="without images.*emu"):
        get_dataset("imagefolder", root=str(tmp_path), split="train")
    (tmp_path / "train" / "emu" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = get_dataset("imagefolder", root=str(tmp_path), split="train")
    with pytest.raises(UserError, match="corrupt or unreadable image .*broken.jpg"):
        ds[5]


def test_max_samples_is_a_seeded_class_stratified_subset():
    a = get_dataset("digits", split="train", max_samples=50, seed=1)
    b = get_dataset("digits", split="train", max_samples=50, seed=1)
    c = get_dataset("digits", split="train", max_samples=50, seed=2)
    assert len(a) == 50 and np.array_equal(a.targets, b.targets) and a.identity != get_dataset("digits").identity
    assert np.bincount(a.targets, minlength=10).min() == 5
    assert not np.array_equal(a.indices, c.indices)


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(UserError, match="did you mean 'digits'"):
        get_dataset("digit")


def test_eval_transforms_per_protocol_and_their_cache_keys(tmp_path):
    """Image folders: shorter side to size*256/224 (bicubic) + center crop, as VISSL/DINO/MSN; the square
    resize elsewhere; the transform is part of the feature-cache key."""
    import torch
    from torchvision import transforms as T

    from jepa_eval.datasets.base import IMAGENET_MEAN, IMAGENET_STD, crop_resize
    from jepa_eval.features import FeatureCache
    (tmp_path / "train" / "a").mkdir(parents=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8))  # wide
    img.save(tmp_path / "train" / "a" / "a_0.png")
    crop = get_dataset("imagefolder", str(tmp_path), "train", image_size=28)
    explicit = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(28),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    squashed = T.Compose([T.Resize((28, 28), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert torch.equal(crop[0][0], explicit) and crop.transform_id == "resize32-centercrop28-bicubic-imagenetnorm"
    square = get_dataset("imagefolder", str(tmp_path), "train", image_size=28, transform="square")
    assert torch.equal(square[0][0], squashed) and (crop[0][0] - squashed).abs().max() > 0.5
    assert (crop_resize(224), crop_resize(448)) == (256, 512)
    meta = {"sha256": "0" * 64, "img_size": 28}
    keys = {FeatureCache(tmp_path / "c").key(FeatureCache.key_fields(meta, "target", "lastPOOL", ds, "float16"))
            for ds in (crop, square)}
    assert len(keys) == 2
    digits = get_dataset("digits", split="test", image_size=28)        # built-in square images: square resize
    assert digits.eval_transform == "square" and digits.transform_id == "resize28-bicubic-imagenetnorm"
    with pytest.raises(UserError, match="unknown eval transform 'crop'"):
        get_dataset("digits", split="test", transform="crop")
