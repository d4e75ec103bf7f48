"""Checkpoint loading: parity with the official forward semantics, resolution changes, strict and safe loading."""
from __future__ import annotations

import pickle

import pytest
import torch

from jepa_eval import UserError, load_checkpoint
from jepa_eval.models import JEPAViT, sincos_pos_embed_2d
import ijepa_reference as ref

HEADS = 4


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sds = ref.official_state_dicts(heads=HEADS)
    path = tmp_path_factory.mktemp("ck") / "IN1K-vit.tiny.4-7e.pth.tar"
    ref.save_official(path, sds)
    return path, sds


def _images(n=3, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_sincos_matches_the_reference_definition():
    assert torch.allclose(sincos_pos_embed_2d(64, 8), ref.sincos_2d(64, 8), atol=1e-6)


def test_target_and_context_encoders_match_official_forward(official):
    path, sds = official
    ck = load_checkpoint(path, num_heads=HEADS)
    x = _images()
    with torch.no_grad():
        for module, key in ((ck.target_encoder, "target_encoder"), (ck.encoder, "encoder")):
            ours, theirs = module(x), ref.encoder_forward(sds[key], x, HEADS)
            assert ours.shape == (3, 64, 64)
            assert (ours - theirs).abs().max().item() <= 1e-5
    # the two encoders really are different weights (the test would pass trivially otherwise)
    assert not torch.allclose(ck.target_encoder(x), ck.encoder(x))
    assert not ck.target_encoder.training and not ck.encoder.training


def test_masked_context_encoder_and_predictor_match_official(official):
    path, sds = official
    ck = load_checkpoint(path, num_heads=HEADS)
    x = _images(n=2)
    g = torch.Generator().manual_seed(3)
    ctx = [torch.stack([torch.randperm(64, generator=g)[:20] for _ in range(2)])]
    tgts = [torch.stack([torch.randperm(64, generator=g)[:9] for _ in range(2)]) for _ in range(4)]
    with torch.no_grad():
        z_ours = ck.encoder(x, masks=ctx)
        z_ref = ref.encoder_forward(sds["encoder"], x, HEADS, masks=ctx)
        assert z_ours.shape == (2, 20, 64) and (z_ours - z_ref).abs().max() <= 1e-5
        p_ours = ck.predictor(z_ours, ctx, tgts)
        p_ref = ref.predictor_forward(sds["predictor"], z_ref, ctx, tgts, HEADS)
    assert p_ours.shape == (8, 9, 64)  # B * len(masks_x) * len(masks), target-mask-major
    assert (p_ours - p_ref).abs().max().item() <= 1e-5
    # two context masks: the batch is tiled like the official code
    ctx2 = ctx + [torch.stack([torch.randperm(64, generator=g)[:20] for _ in range(2)])]
    with torch.no_grad():
        z2 = ref.encoder_forward(sds["encoder"], x, HEADS, masks=ctx2)
        assert (ck.encoder(x, masks=ctx2) - z2).abs().max() <= 1e-5
        diff = ck.predictor(z2, ctx2, tgts) - ref.predictor_forward(sds["predictor"], z2, ctx2, tgts, HEADS)
    assert diff.shape[0] == 16 and diff.abs().max() <= 1e-5


def test_meta_records_architecture_and_file_identity(official):
    path, _ = official
    meta = load_checkpoint(path, num_heads=HEADS).meta
    assert (meta["width"], meta["depth"], meta["heads"], meta["patch_size"], meta["img_size"]) == (64, 3, 4, 4, 32)
    assert meta["source_format"] == "ijepa-official" and meta["epoch"] == 7
    import hashlib
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_other_resolution_resizes_the_full_grid_without_a_cls_token(official):
    path, _ = official
    ck = load_checkpoint(path, num_heads=HEADS, img_size=64)
    assert ck.meta["img_size"] == 64
    with torch.no_grad():
        assert ck.target_encoder(_images(size=64)).shape == (3, 256, 64)
        # tokens depend on position only when the patch embedding is zero: read the resized grid back
        enc: JEPAViT = ck.target_encoder
        zeros = torch.zeros(1, 16, 16, 64)  # NHWC grid at the new resolution
        resized = enc._pos_embed(zeros)[0].reshape(16, 16, 64)
    grid = enc.pos_embed[0].reshape(8, 8, 64)
    # corners keep their embedding: the official code treats token 0 as a cls token and shifts the grid
    for (r, c), (r0, c0) in {(0, 0): (0, 0), (0, 15): (0, 7), (15, 0): (7, 0), (15, 15): (7, 7)}.items():
        assert torch.allclose(resized[r, c], grid[r0, c0], atol=0.15), (r, c)
    # and the resized grid is close to the sin-cos grid sampled at the matching fractional positions
    first_row_ok = torch.nn.functional.cosine_similarity(resized[0, ::2], grid[0], dim=-1).min()
    assert first_row_ok > 0.95


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pth.tar"
    with open(bad, "wb") as f:
        pickle.dump({"encoder": Payload()}, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(bad)
    assert not marker.exists()
    # the same payload inside torch.save's zip format is refused too
    torch.save({"encoder": Payload()}, tmp_path / "evil2.pth.tar")
    marker.unlink(missing_ok=True) if marker.exists() else None
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil2.pth.tar")
    assert not marker.exists()


@pytest.mark.parametrize("mutate, expected", [
    (lambda sd: sd["encoder"].pop("module.blocks.1.attn.qkv.bias"), r"missing keys: blocks\.1\.attn\.qkv\.bias"),
    (lambda sd: sd["encoder"].update({"module.blocks.0.extra": torch.zeros(2)}), r"unexpected keys: blocks\.0\.extra"),
    (lambda sd: sd["predictor"].update({"module.predictor_proj.bias": torch.zeros(5)}),
     r"shape mismatches: predictor_proj\.bias \(5,\)"),
])
def test_strict_loading_names_the_bad_keys(tmp_path, mutate, expected):
    sds = ref.official_state_dicts(heads=HEADS)
    path = tmp_path / "ck.pth.tar"
    ref.save_official(path, sds)
    obj = torch.load(path, weights_only=True)
    mutate(obj)
    torch.save(obj, path)
    with pytest.raises(UserError, match=expected):
        load_checkpoint(path, num_heads=HEADS)


@pytest.mark.parametrize("content, expected", [
    (b"this is a text file, not weights\n", "not a"),
    (None, "truncated or corrupt"),
])
def test_files_that_are_not_checkpoints(tmp_path, official, content, expected):
    path = tmp_path / "model.pth.tar"
    path.write_bytes(content if content is not None else official[0].read_bytes()[:5000])
    with pytest.raises(UserError, match=expected):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth.tar")


def test_other_architectures_are_refused(tmp_path):
    import torchvision
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match="not an I-JEPA ViT encoder"):
        load_checkpoint(path)


def test_image_size_must_be_divisible_by_patch(official):
    with pytest.raises(UserError, match="not divisible by the patch size 4"):
        load_checkpoint(official[0], num_heads=HEADS, img_size=30)


def test_heads_come_from_the_width_table_and_unknown_widths_need_an_override(tmp_path):
    sds = ref.official_state_dicts(width=192, depth=1, heads=3, pred_width=48, pred_depth=1)
    path = tmp_path / "tiny.pth.tar"
    ref.save_official(path, sds)
    ck = load_checkpoint(path)  # 192 -> 3 heads (ViT-tiny) from the table
    x = _images(n=1)
    with torch.no_grad():
        assert (ck.target_encoder(x) - ref.encoder_forward(sds["target_encoder"], x, 3)).abs().max() <= 1e-5
    odd = tmp_path / "odd.pth.tar"
    ref.save_official(odd, ref.official_state_dicts(width=40, depth=1, heads=4, pred_depth=1))
    with pytest.raises(UserError, match="number of heads for width 40"):
        load_checkpoint(odd)


def test_plain_state_dict_and_timm_specs(tmp_path):
    sds = ref.official_state_dicts(heads=HEADS)
    plain = tmp_path / "encoder.pth"
    torch.save(sds["target_encoder"], plain)
    ck = load_checkpoint(plain, num_heads=HEADS)
    assert ck.meta["source_format"] == "state_dict" and ck.predictor is None
    tm = load_checkpoint("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2")
    with torch.no_grad():
        out = tm.target_encoder(_images(n=2))
    assert out.shape == (2, 16, 192)  # patch tokens only: the cls token is stripped
    again = load_checkpoint("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2")
    assert again.meta["sha256"] == tm.meta["sha256"]  # seeded random init: same weights, same cache key
    weights = tmp_path / "w.pth"
    torch.save(tm.target_encoder.model.state_dict(), weights)
    loaded = load_checkpoint(f"timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,weights={weights}")
    assert loaded.meta["weights"] == str(weights)
    with pytest.raises(UserError, match="unknown timm model"):
        load_checkpoint("timm:vit_tinyy_patch16_224")
