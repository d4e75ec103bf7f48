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


def test_damaged_entry_is_detected_and_rebuilt(tmp_path, ck, data, caplog):
    caplog.set_level("INFO", logger="jepa_eval")   # the library logs; no CLI handler when run alone
    cache = FeatureCache(tmp_path)
    f = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False)
    good = np.array(f.x)
    blob = bytearray((f.path / "features.npy").read_bytes())
    blob[-10:] = b"\xff" * 10
    (f.path / "features.npy").write_bytes(bytes(blob))
    seen = ck.target_encoder.seen
    again = cache.get_or_extract(ck, "target", "lastPOOL", data, progress=False)
    assert ck.target_encoder.seen > seen and "damaged" in caplog.text
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
    with pytest.raises(UserError, match="NaN/inf"):
        FeatureCache(tmp_path).get_or_extract_many(base, "target", ["lastPOOL", "concatPOOL2"], data, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.endswith(".partial")]


def test_bad_pooling_and_dtype_are_user_errors(tmp_path, ck, data):
    with pytest.raises(UserError, match="unknown pooling"):
        FeatureCache(tmp_path).get_or_extract(ck, "target", "maxPOOL", data)
    with pytest.raises(UserError, match="float16 or float32"):
        FeatureCache(tmp_path).get_or_extract(ck, "target", "lastPOOL", data, dtype="int8")


# ---------------------------------------------------------------- several poolings from one encoder pass
import jepa_eval.features as features_mod  # noqa: E402

TIMM_POOLINGS = ["lastPOOL", "concatPOOL2", "blocksPOOL", "tokens"]


class PassCounter:
    """Counts encoder passes over a batch: every forward, and every forward_last_blocks, embeds patches once."""

    def __init__(self, encoder):
        self.calls = 0
        inner = getattr(encoder, "model", encoder)  # TimmTokens wraps the timm model
        inner.patch_embed.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.fixture(scope="module")
def plain():
    """A checkpoint whose encoder is not wrapped, so lastPOOL and tokens can share the block pass."""
    return load_checkpoint(SPEC)


def entry_files(f) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(f.path.iterdir())}


@pytest.mark.parametrize("kind", ["timm", "jepa"])
def test_many_poolings_are_byte_identical_to_each_pooling_alone(tmp_path, data, kind):
    if kind == "timm":
        ck, poolings, d = load_checkpoint(SPEC), TIMM_POOLINGS, data
    else:  # the I-JEPA encoder class of real checkpoints, deep enough for concatPOOL4 of 5 blocks
        ref.save_official(tmp_path / "ck.pth.tar", ref.official_state_dicts(heads=4, depth=5))
        ck = load_checkpoint(tmp_path / "ck.pth.tar", num_heads=4)
        poolings = ["lastPOOL", "concatPOOL4", "blocksPOOL", "tokens"]
        d = get_dataset("digits", split="test", image_size=int(ck.meta["img_size"]), max_samples=40)
    for dtype in ("float32", "float16"):
        many = FeatureCache(tmp_path / f"many-{dtype}").get_or_extract_many(
            ck, "target", poolings, d, dtype=dtype, progress=False, chunk_images=32, batch_size=16)
        assert list(many) == poolings
        for p in poolings:
            alone = FeatureCache(tmp_path / f"alone-{dtype}").get_or_extract(
                ck, "target", p, d, dtype=dtype, progress=False, chunk_images=32, batch_size=16)
            assert many[p].key == alone.key and entry_files(many[p]) == entry_files(alone), p


def test_the_encoder_runs_once_per_batch_for_all_poolings(tmp_path, plain, data):
    counter = PassCounter(plain.target_encoder)
    got = FeatureCache(tmp_path).get_or_extract_many(plain, "target", TIMM_POOLINGS, data, progress=False,
                                                     batch_size=32)
    assert counter.calls == 1 + 4  # the shape probe, then 100 images in 4 batches: not 4 passes per batch
    assert got["concatPOOL2"].x.shape == (100, 2 * 192) and got["blocksPOOL"].x.shape == (100, 2, 192)
    assert got["tokens"].x.shape == (100, 4, 192)
    assert np.array_equal(np.asarray(got["lastPOOL"].x), np.asarray(got["concatPOOL2"].x[:, 192:]))


def test_interrupted_multi_extraction_resumes_identically(tmp_path, plain, data):
    cache, poolings = FeatureCache(tmp_path), ["lastPOOL", "concatPOOL2"]
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_extract_many(plain, "target", poolings, Exploding(data, fail_at=70), progress=False,
                                  chunk_images=32, dtype="float32")
    partials = sorted(tmp_path.glob("*.partial"))
    assert len(partials) == 2 and all((p / "progress.json").read_text() == '{"done": 64}' for p in partials)
    counter = PassCounter(plain.target_encoder)
    resumed = cache.get_or_extract_many(plain, "target", poolings, data, progress=False, chunk_images=32,
                                        dtype="float32")
    assert counter.calls == 1 + 2  # the probe, then [64, 96) and [96, 100): the durable chunks are kept
    fresh = FeatureCache(tmp_path / "fresh").get_or_extract_many(plain, "target", poolings, data,
                                                                 progress=False, dtype="float32")
    for p in poolings:
        assert entry_files(resumed[p]) == entry_files(fresh[p]), p
    assert not list(tmp_path.glob("*.partial"))


def test_entries_resumed_from_different_chunks_are_finished_in_one_pass(tmp_path, plain, data):
    """lastPOOL was interrupted alone after 64 images; a request for both then starts concatPOOL2 from
    0 and writes lastPOOL only from row 64 on, from the same passes."""
    cache = FeatureCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_extract(plain, "target", "lastPOOL", Exploding(data, fail_at=70), progress=False,
                             chunk_images=32, dtype="float32")
    counter = PassCounter(plain.target_encoder)
    both = cache.get_or_extract_many(plain, "target", ["lastPOOL", "concatPOOL2"], data, progress=False,
                                     chunk_images=32, dtype="float32")
    assert counter.calls == 1 + 4  # the probe and one pass per chunk, shared by both entries
    fresh = FeatureCache(tmp_path / "fresh")
    for p in ("lastPOOL", "concatPOOL2"):
        assert entry_files(both[p]) == entry_files(fresh.get_or_extract(plain, "target", p, data, progress=False,
                                                                        dtype="float32")), p


def test_only_missing_poolings_are_built(tmp_path, plain, data, monkeypatch):
    cache = FeatureCache(tmp_path)
    last = cache.get_or_extract(plain, "target", "lastPOOL", data, progress=False)
    before = (last.path / "features.npy").stat()
    asked = []
    real = features_mod.pool_many
    monkeypatch.setattr(features_mod, "pool_many", lambda enc, x, ps: (asked.append(list(ps)), real(enc, x, ps))[1])
    both = cache.get_or_extract_many(plain, "target", ["lastPOOL", "concatPOOL2"], data, progress=False)
    assert asked and all(ps == ["concatPOOL2"] for ps in asked)
    after = (both["lastPOOL"].path / "features.npy").stat()
    assert both["lastPOOL"].path == last.path and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    asked.clear()
    again = cache.get_or_extract(plain, "target", "concatPOOL2", data, progress=False)  # a later single request
    assert not asked and again.path == both["concatPOOL2"].path


def test_an_entry_finished_by_another_process_while_waiting_is_not_rebuilt(tmp_path, plain, data, monkeypatch):
    cache, other = FeatureCache(tmp_path), FeatureCache(tmp_path)
    key = cache.key(cache.key_fields(plain.meta, "target", "lastPOOL", data, "float16"))
    real_lock, raced = features_mod.FileLock, []

    def racing_lock(path):
        if path.endswith(f"{key}.lock") and not raced:
            raced.append(path)  # the other process takes this lock too: race only once
            other.get_or_extract(plain, "target", "lastPOOL", data, progress=False)  # finishes before we hold it
        return real_lock(path)

    monkeypatch.setattr(features_mod, "FileLock", racing_lock)
    asked = []
    real = features_mod.pool_many
    monkeypatch.setattr(features_mod, "pool_many", lambda enc, x, ps: (asked.append(list(ps)), real(enc, x, ps))[1])
    both = cache.get_or_extract_many(plain, "target", ["lastPOOL", "concatPOOL2"], data, progress=False)
    # the other process: a probe and 2 batches of 64 for lastPOOL; then ours, for concatPOOL2 alone
    assert asked == [["lastPOOL"]] * 3 + [["concatPOOL2"]] * 3
    assert both["lastPOOL"].path.name == key and set(both) == {"lastPOOL", "concatPOOL2"}


RUNNER_BATTERY = """description: two entries reading lastPOOL and concatPOOL2 of the same splits
tasks:
  - {task: knn, dataset: digits, max_samples: {train: 60, test: 30}, pooling: lastPOOL, params: {ks: [5]}}
  - {task: linear, dataset: digits, max_samples: {train: 60, test: 30}, pooling: [lastPOOL, concatPOOL2],
     params: {epochs: 1, lrs: [0.1], wds: [0.0], norms: [none]}}
"""


@pytest.mark.parametrize("launch", ["inprocess", "units"])
def test_the_runner_extracts_every_pooling_of_a_split_in_one_pass(tmp_path, monkeypatch, launch, one_thread):
    """k-NN runs first and reads lastPOOL only; the pass it starts also fills linear's concatPOOL2."""
    from jepa_eval.launchers.units import UnitRunner, plan_units
    from jepa_eval.runner import plan, run_in_process
    battery = tmp_path / "b.yaml"
    battery.write_text(RUNNER_BATTERY)
    asked = []
    real = features_mod.pool_many
    monkeypatch.setattr(features_mod, "pool_many", lambda enc, x, ps: (asked.append(sorted(ps)), real(enc, x, ps))[1])
    jobs = plan([SPEC], str(battery), tmp_path / "out", tmp_path / "cache")
    if launch == "inprocess":
        assert len(run_in_process(jobs, progress=False)) == 2
    else:
        units, _ = plan_units(jobs, {SPEC: load_checkpoint(SPEC)}, tmp_path / "out")
        for unit in units:
            UnitRunner(unit)()
    # train (60 images) and test (30): a probe and one batch each, every time for both poolings
    assert asked == [["concatPOOL2", "lastPOOL"]] * 4
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 4


def test_a_pooling_only_another_job_reads_cannot_fail_this_job(tmp_path, one_thread):
    """The linear entry asks for more blocks than the encoder has: k-NN, run first, still gets its record."""
    from jepa_eval.runner import plan, run_in_process
    battery = tmp_path / "b.yaml"
    battery.write_text(RUNNER_BATTERY.replace("concatPOOL2", "concatPOOL5"))
    jobs = plan([SPEC], str(battery), tmp_path / "out", tmp_path / "cache")
    with pytest.raises(UserError, match="concatPOOL5|5 blocks|depth"):
        run_in_process(jobs, progress=False)
    records = [p for p in (tmp_path / "out").rglob("*.json") if p.parent.name != "cache"]
    assert any("knn" in p.name for p in records), records
