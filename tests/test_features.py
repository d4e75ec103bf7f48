"""Feature cache: keys, reuse, resume after a crash, damaged entries, pooling definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jepa_eval import UserError, load_checkpoint
from jepa_eval.checkpoint import Checkpoint
from jepa_eval.datasets import get_dataset
from jepa_eval.features import FeatureCache, pool
import ijepa_reference as ref

SPEC = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=2"


class Counting(torch.nn.Module):
    """Wraps an encoder and counts the images it encodes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x, masks=None):
        self.seen += len(x)
        return self.inner(x)

    def forward_last_blocks(self, x, n):
        self.seen += len(x)
        return self.inner.forward_last_blocks(x, n)


class Exploding(torch.utils.data.Dataset):
    """A dataset that fails at index ``fail_at`` (a crash in the middle of an extraction)."""

    def __init__(self, base, fail_at):
        self.base, self.fail_at = base, fail_at
        self.targets, self.classes = base.targets, base.classes
        self.identity, self.transform_id = base.identity, base.transform_id

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return self.base[i]


@pytest.fixture(scope="module")
def ck():
    base = load_checkpoint(SPEC)
    enc = Counting(base.target_encoder)
    return Checkpoint(enc, enc, None, base.meta)


@pytest.fixture(scope="module")
def data():
    return get_dataset("digits", split="test", image_size=16, max_samples=100)


def test_extract_once_then_read_the_memory_map(tmp_path, ck, data):
    cache = FeatureCache(tmp_path)
    before = ck.target_encoder.seen
    f1 = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False, chunk_images=32)
    assert ck.target_encoder.seen - before == 100 + 1  # one probe image for the shape, then each image once
    assert f1.x.shape == (100, 192) and f1.x.dtype == np.float16 and isinstance(f1.x, np.memmap)
    assert np.array_equal(f1.y, data.targets)
    seen = ck.target_encoder.seen
    f2 = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False)
    assert ck.target_encoder.seen == seen and f2.key == f1.key
    expected = torch.stack([data[i][0] for i in range(100)])
    with torch.no_grad():
        direct = ck.target_encoder.inner(expected).mean(1).numpy()
    assert np.allclose(np.asarray(f1.x, dtype=np.float32), direct, atol=2e-3)


def test_key_changes_with_everything_that_changes_the_numbers(tmp_path, ck, data):
    cache = FeatureCache(tmp_path)
    fields = cache.key_fields(ck.meta, "target", "lastPOOL", data, "float16")
    base = cache.key(fields)
    other_split = get_dataset("digits", split="train", image_size=16, max_samples=100)
    variants = [dict(fields, encoder="context"), dict(fields, pooling="concatPOOL4"),
                dict(fields, dtype="float32"), dict(fields, sha256="0" * 64),
                dict(fields, transform="resize32"),
                cache.key_fields(ck.meta, "target", "lastPOOL", other_split, "float16")]
    keys = {cache.key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_interrupted_extraction_resumes_from_the_last_chunk(tmp_path, ck, data):
    cache = FeatureCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_extract(ck, "target", "lastPOOL", Exploding(data, fail_at=70), progress=False,
                             chunk_images=32, dtype="float32")
    assert not any(p.is_dir() and not p.name.endswith(".partial") for p in tmp_path.iterdir())
    seen = ck.target_encoder.seen
    resumed = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False, chunk_images=32,
                                   dtype="float32")
    assert ck.target_encoder.seen - seen == 1 + (100 - 64)  # chunks [0,32) and [32,64) were kept
    fresh = FeatureCache(tmp_path / "fresh").get_or_extract(ck, "target", "lastPOOL", data, progress=False,
                                                            dtype="float32")
    assert np.array_equal(np.asarray(resumed.x), np.asarray(fresh.x))


def test_damaged_entry_is_detected_and_rebuilt(tmp_path, ck, data, capsys):
    cache = FeatureCache(tmp_path)
    f = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False)
    good = np.array(f.x)
    blob = bytearray((f.path / "features.npy").read_bytes())
    blob[-10:] = b"\xff" * 10
    (f.path / "features.npy").write_bytes(bytes(blob))
    seen = ck.target_encoder.seen
    again = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False)
    assert ck.target_encoder.seen > seen and "damaged" in capsys.readouterr().err
    assert np.array_equal(np.asarray(again.x), good)


def test_concat_pool_is_the_mean_of_each_last_block_through_the_final_norm(tmp_path):
    sds = ref.official_state_dicts(heads=4, depth=5)
    path = tmp_path / "ck.pth.tar"
    ref.save_official(path, sds)
    enc = load_checkpoint(path, num_heads=4).target_encoder
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = pool(enc, x, "concatPOOL4")
        tokens = enc._pos_embed(enc.patch_embed(x))
        means = []
        for i, blk in enumerate(enc.blocks):
            tokens = blk(tokens)
            if i >= 1:
                means.append(enc.norm(tokens).mean(1))
        assert feats.shape == (2, 4 * 64)
        assert torch.allclose(feats, torch.cat(means, -1), atol=1e-6)
        assert torch.allclose(pool(enc, x, "lastPOOL"), ref.encoder_forward(sds["target_encoder"], x, 4).mean(1),
                              atol=1e-5)


def test_nan_features_are_refused_and_nothing_is_cached(tmp_path, data):
    base = load_checkpoint(SPEC)
    with torch.no_grad():
        base.target_encoder.model.blocks[0].mlp.fc1.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="NaN/inf"):
        FeatureCache(tmp_path).get_or_extract(base, "target", "lastPOOL", data, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.endswith(".partial")]


def test_bad_pooling_and_dtype_are_user_errors(tmp_path, ck, data):
    with pytest.raises(UserError, match="unknown pooling"):
        FeatureCache(tmp_path).get_or_extract(ck, "target", "maxPOOL", data)
    with pytest.raises(UserError, match="float16 or float32"):
        FeatureCache(tmp_path).get_or_extract(ck, "target", "lastPOOL", data, dtype="int8")
