"""``jepa-eval export``: a safetensors encoder + JSON card that plain timm loads, and that
``load_checkpoint`` reads back with outputs identical to the original checkpoint."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import ijepa_reference as ref
from jepa_eval import UserError, load_checkpoint
from jepa_eval.cli import main
from test_lazy_load import save_with_opt

HEADS = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    sds = ref.official_state_dicts(heads=HEADS)
    path = tmp / "IN1K-vit.tiny.4-7e.pth.tar"
    save_with_opt(path, sds)
    assert main(["export", "--checkpoint", str(path), "--encoder", "target", "--out", str(tmp / "out"),
                 "--num-heads", str(HEADS), "--cache", str(tmp / "cache")]) == 0
    assert main(["export", "--checkpoint", str(path), "--encoder", "context", "--out", str(tmp / "out"),
                 "--num-heads", str(HEADS), "--cache", str(tmp / "cache")]) == 0
    return path, sds, tmp / "out", tmp / "cache"


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(4))


def test_the_card_describes_the_export_and_plain_timm_loads_it_strictly(exported):
    path, sds, out, cache = exported
    card = json.loads((out / "IN1K-vit.tiny.4-7e-target.json").read_text())
    assert card["encoder"] == "target" and card["timm_kwargs"]["num_heads"] == HEADS
    assert (card["width"], card["depth"], card["patch_size"], card["img_size"]) == (64, 3, 4, 32)
    import hashlib
    assert card["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    weights = out / card["weights"]
    assert card["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    model = VisionTransformer(**card["timm_kwargs"]).eval()
    model.load_state_dict(load_file(weights))  # strict by default
    x = _x()
    with torch.no_grad():
        tokens = model.forward_features(x)
        theirs = ref.encoder_forward(sds["target_encoder"], x, HEADS)
        assert (tokens - theirs).abs().max() <= 1e-5  # the official forward, through plain timm
        assert torch.allclose(model(x), tokens.mean(1), atol=1e-6)  # forward = lastPOOL
    # the three lines the card gives run as written (from the export folder)
    import os
    cwd = os.getcwd()
    try:
        os.chdir(out)
        scope: dict = {}
        exec("\n".join(card["how_to_load"]), scope)
    finally:
        os.chdir(cwd)
    with torch.no_grad():
        assert torch.equal(scope["model"].forward_features(x), tokens)


def test_timm_create_model_with_a_file_overlay_loads_it(exported):
    _, sds, out, _ = exported
    card = json.loads((out / "IN1K-vit.tiny.4-7e-context.json").read_text())
    model = timm.create_model(card["timm_model"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / card["weights"])),
                              **card["timm_kwargs"]).eval()
    with torch.no_grad():
        diff = model.forward_features(_x()) - ref.encoder_forward(sds["encoder"], _x(), HEADS)
    assert diff.abs().max() <= 1e-5


def test_load_checkpoint_on_the_export_gives_identical_outputs(exported):
    path, _, out, cache = exported
    original = load_checkpoint(path, num_heads=HEADS, cache=cache)
    for which, name in (("target", "target_encoder"), ("context", "encoder")):
        back = load_checkpoint(out / f"IN1K-vit.tiny.4-7e-{which}.safetensors", cache=cache)  # heads from the file
        assert back.materialized == ()
        assert back.meta["exported_from_sha256"] == original.meta["sha256"]
        assert back.meta["exported_encoder"] == which and back.meta["source_format"] == "export"
        with torch.no_grad():
            for size in (32, 48):  # also at another resolution (resampled positions)
                assert torch.equal(back.target_encoder(_x(size=size)), getattr(original, name)(_x(size=size)))
        a, b = back.target_encoder.state_dict(), getattr(original, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_what_it_cannot_export(exported, tmp_path, capsys):
    _, _, out, _ = exported
    assert main(["export", "--checkpoint", "timm:vit_tiny_patch16_224", "--out", str(tmp_path)]) == 2
    assert "I-JEPA checkpoint file" in capsys.readouterr().err
    only_target = tmp_path / "t.pth.tar"
    sds = ref.official_state_dicts(width=192, depth=1, heads=3, pred_width=48, pred_depth=1)
    torch.save({"target_encoder": {f"module.{k}": v for k, v in sds["target_encoder"].items()}}, only_target)
    with pytest.raises(UserError, match="has no context encoder"):
        from jepa_eval.export import export_encoder
        export_encoder(str(only_target), "context", tmp_path / "o", cache=tmp_path)
    assert main(["export", "--checkpoint", str(tmp_path / "absent.pth.tar"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_damaged_safetensors_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "enc.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(bad, cache=tmp_path)
