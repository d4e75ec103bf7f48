"""Diffusion decoder: cached representations, image and region (inpainting) training, the sample arrays
and their controls, figures, CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_eval.checkpoint import load_checkpoint
from jepa_eval.cli import main
from jepa_eval.datasets import get_dataset
from jepa_eval.decoder import load_config, load_decoder, train_decoder
from jepa_eval.decoder.cache import from_decoder, to_decoder
from jepa_eval.decoder.features import block_boxes, box_mask, crop_boxes, inpaint_context
from jepa_eval.decoder.sample import derangement
from jepa_eval.decoder.visualize import GAP, HEADER
from jepa_eval.errors import UserError
from jepa_eval.models import JEPAPredictor, build_encoder

TIMM = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
TINY = """
size: 16
unet: {block_out_channels: [8, 16], layers_per_block: 1, norm_num_groups: 4}
train: {batch_size: 8, max_steps: 3, warmup_steps: 1, sample_every: 2, save_every: 2, ddim_steps: 2,
        grid_size: 4, max_samples: 24, lr: 1.0e-3}
masks: {npred: 2, min_keep: 1}
"""


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A random-init checkpoint in the official layout, with a predictor, 16 px images, patch 4."""
    torch.manual_seed(0)
    enc = build_encoder(192, 1, 4, 16)
    pred = JEPAPredictor(16, 192, 48, 1, num_heads=3)
    sd = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    path = tmp_path_factory.mktemp("ck") / "random.pth.tar"
    torch.save({"encoder": sd(enc), "predictor": sd(pred), "target_encoder": sd(enc), "epoch": 0}, path)
    return path


def test_pixels_pad_round_trip_and_box_context():
    px = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x = to_decoder(px, 32)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert (x[..., :2, :] == -1).all() and (x[..., :, 30:] == -1).all()   # black padding
    assert np.array_equal(from_decoder(x, 28, 28), px.permute(0, 2, 3, 1).numpy())
    # a 2x2-patch block at patch rows 1-2, cols 2-3 for image 0, rows 0-1, cols 0-1 for image 1
    idx = torch.tensor([[6, 7, 10, 11], [0, 1, 4, 5]])
    boxes = block_boxes(idx, grid_w=4, patch=8)
    assert boxes.tolist() == [[16, 8, 32, 24], [0, 0, 16, 16]]
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.allclose(crop_boxes(imgs, boxes, 16)[0], imgs[0, :, 8:24, 16:32], atol=1e-5)
    mask = box_mask(boxes, offset=2, scale=1.0, size=36)
    assert mask[0, 0].sum() == 16 * 16 and mask[0, 0, 10, 18] == 1 and mask[0, 0, 9, 18] == 0
    ctx = inpaint_context(torch.ones(2, 1, 36, 36), mask)
    assert ctx.shape == (2, 2, 36, 36) and ctx[0, 0, 10, 18] == 0 and ctx[0, 0, 0, 0] == 1


def test_derangement():
    for n, seed in [(2, 0), (5, 1), (200, 0)]:
        perm = derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n)) and (perm != np.arange(n)).all()
    assert not np.array_equal(derangement(50, 0), derangement(50, 1))
    with pytest.raises(UserError, match="at least 2"):
        derangement(1, 0)


def test_image_mode_loss_decreases_from_the_cache(tmp_path, official):
    """Image mode on gray digits: one channel, the encoder runs once, and the loss falls."""
    ck = load_checkpoint(str(official))
    ds = get_dataset("digits", split="train", image_size=16, max_samples=64)
    cfg = load_config("cpu", size=16, max_steps=60, batch_size=16)
    cfg.unet.block_out_channels, cfg.train.warmup_steps, cfg.train.lr = (16, 32), 5, 3e-3
    cfg.train.sample_every = cfg.train.save_every = 60
    res = train_decoder(ck, ds, tmp_path / "img", cfg, device="cpu", log=lambda s: None)
    first, last = np.mean(res["losses"][:10]), np.mean(res["losses"][-10:])
    assert last < 0.8 * first, (first, last)
    dec = load_decoder(tmp_path / "img")
    assert dec.spec.channels == 1 and dec.spec.condition == "image" and dec.spec.prediction_type == "v_prediction"
    with np.load(tmp_path / "img" / "reps.npz") as z:
        assert z["pixels"].shape == (64, 1, 16, 16) and z["pooled"].shape == (64, 192) and "tokens" not in z.files
    # fp16 weights on disk, EMA (differs from the raw weights)
    sd = torch.load(tmp_path / "img" / "decoder.pt", weights_only=True)
    assert sd["null"].dtype == torch.float16
    raw = torch.load(tmp_path / "img" / "state.pt", weights_only=True)["model"]
    assert any(not torch.allclose(p.float(), raw[k].float(), atol=1e-3) for k, p in sd.items())


def test_training_resumes_exactly_and_writes_samples(tmp_path, tiny_cfg):
    ck = load_checkpoint(TIMM)
    ds = get_dataset("digits", split="train", image_size=32, max_samples=24)
    short = load_config(str(tiny_cfg), max_steps=2, condition="region")
    train_decoder(ck, ds, tmp_path / "a", short, device="cpu", log=lambda s: None)
    with pytest.raises(UserError, match="--resume"):
        train_decoder(ck, ds, tmp_path / "a", short, device="cpu")
    full = load_config(str(tiny_cfg), max_steps=3, condition="region")
    res = train_decoder(ck, ds, tmp_path / "a", full, resume=True, device="cpu", log=lambda s: None)
    assert res["steps"] == 3
    ref = train_decoder(ck, ds, tmp_path / "b", full, device="cpu", log=lambda s: None)
    assert ref["steps"] == 3
    resumed = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    straight = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 3
    for k, v in straight["model"].items():
        assert torch.allclose(resumed["model"][k], v, atol=1e-6), k
    dec = load_decoder(tmp_path / "a")
    assert dec.spec.size == 16 and dec.spec.cond_dim == 192 and dec.spec.condition == "region"
    assert dec.unet.conv_in.in_channels == 2 * 1 + 1   # noisy + context + box mask, gray
    with np.load(tmp_path / "a" / "reps.npz") as z:
        assert z["tokens"].shape == (24, 16, 192) and z["tokens"].dtype == np.float16
    grids = sorted((tmp_path / "a" / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_000002.png", "step_000003.png"]
    assert Image.open(grids[-1]).size == (4 * 17 + 1, 2 * 17 + 1)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["loss"])


def test_cli_sample_arrays_guidance_and_figures(tmp_path, tiny_cfg, official, capsys):
    ck = str(official)
    img_dec, reg_dec = tmp_path / "img", tmp_path / "reg"
    for out, cond in ((img_dec, "image"), (reg_dec, "region")):
        assert main(["decoder", "train", "--checkpoint", ck, "--dataset", "digits", "--out", str(out),
                     "--config", str(tiny_cfg), "--max-steps", "2", "--condition", cond]) == 0
    npz = tmp_path / "s.npz"
    assert main(["decoder", "sample", "--checkpoint", ck, "--decoder", str(img_dec), "--dataset", "digits",
                 "--split", "test", "--n", "5", "--seed", "3", "--ddim-steps", "3", "--guidance", "3",
                 "--out", str(npz)]) == 0
    z = np.load(npz)
    for k in ("images", "cond_true", "cond_other", "cond_true_cfg", "cond_other_cfg"):
        assert z[k].shape == (5, 16, 16, 1) and z[k].dtype == np.uint8, k
    assert z["labels"].shape == (5,) and sorted(z["perm"]) == list(range(5)) and (z["perm"] != np.arange(5)).all()
    ds = get_dataset("digits", split="test", image_size=16)
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(3))[:5]
    assert z["labels"].tolist() == [ds[int(i)][1] for i in pick]
    assert not np.array_equal(z["cond_true"], z["cond_true_cfg"])     # guidance changes the samples
    assert not np.array_equal(z["cond_true"], z["cond_other"])        # so does the conditioning
    pnz = tmp_path / "p.npz"
    assert main(["decoder", "sample", "--checkpoint", ck, "--decoder", str(reg_dec), "--dataset", "digits",
                 "--mode", "predictor", "--n", "4", "--ddim-steps", "2", "--out", str(pnz)]) == 0
    p = np.load(pnz)
    for k in ("images", "context", "from_pred", "from_true", "from_other"):
        assert p[k].shape == (4, 16, 16, 1) and p[k].dtype == np.uint8, k
    assert p["boxes"].shape == (4, 4)
    x1, y1, x2, y2 = p["boxes"][0]
    outside = np.ones((16, 16), bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(p["from_pred"][0][outside], p["images"][0][outside])  # only the box is drawn
    assert (p["context"][0][~outside] == 128).all()
    fig = tmp_path / "fig.png"
    capsys.readouterr()
    assert main(["decoder", "visualize", "--checkpoint", ck, "--decoder", str(img_dec), "--dataset", "digits",
                 "--out", str(fig), "--n-images", "3", "--ddim-steps", "2", "--panel", "32"]) == 0
    assert "3 rows x 5 panels" in capsys.readouterr().out
    assert Image.open(fig).size == (5 * 32 + 6 * GAP, HEADER + 3 * 32 + 4 * GAP)


def test_user_mistakes_are_one_line(tmp_path, tiny_cfg, official, capsys):
    out = tmp_path / "dec"
    assert main(["decoder", "train", "--checkpoint", TIMM, "--dataset", "digits", "--out", str(out),
                 "--config", str(tiny_cfg), "--max-steps", "1"]) == 0
    capsys.readouterr()
    base = ["--dataset", "digits", "--out", str(tmp_path / "s.npz")]
    cases = [(["--checkpoint", str(official), "--decoder", str(out)], "another checkpoint"),
             (["--checkpoint", TIMM, "--decoder", str(out), "--mode", "predictor"], "condition: region"),
             (["--checkpoint", TIMM, "--decoder", str(tmp_path / "none")], "not a trained decoder folder"),
             (["--checkpoint", TIMM, "--decoder", str(out), "--n", "1"], "at least 2"),
             (["--checkpoint", TIMM, "--decoder", str(out), "--n", "100000"], "exceeds")]
    for args, msg in cases:
        assert main(["decoder", "sample", *args, *base]) == 2, msg
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.npz").exists()


def test_config_mistakes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batchsize: 4}\n")
    with pytest.raises(UserError, match="unknown key.*batchsize"):
        load_config(str(bad))
    with pytest.raises(UserError, match="neither a packaged config"):
        load_config("nope")
    pred = tmp_path / "pred.yaml"
    pred.write_text("diffusion: {prediction_type: x}\n")
    with pytest.raises(UserError, match="prediction_type"):
        load_config(str(pred))
    assert load_config("cpu").size == 32 and load_config("cpu").condition == "image"
    assert 64 <= load_config("gpu").size <= 128
    odd = tmp_path / "odd.yaml"
    odd.write_text("size: 18\nunet: {block_out_channels: [8, 16, 16], norm_num_groups: 4}\n")
    ck = load_checkpoint(TIMM)
    with pytest.raises(UserError, match="divisible by 4"):
        train_decoder(ck, get_dataset("digits", image_size=32, max_samples=4), tmp_path / "o", load_config(str(odd)))


def test_demo_decoder_path_and_the_demo_checks_its_checkpoint(tmp_path, monkeypatch, official):
    import jepa_eval.assets as assets
    from jepa_eval.checkpoint import sha256_file
    from jepa_eval.demo import shipped_decoder
    monkeypatch.setattr(assets, "DEMO_DECODER_DIR", tmp_path / "dd")
    with pytest.raises(UserError, match="missing"):
        assets.demo_decoder_path()
    with pytest.raises(UserError, match="mode"):
        assets.demo_decoder_path("pixels")
    assert shipped_decoder(official, "image") is None
    folder = tmp_path / "dd" / "image"
    folder.mkdir(parents=True)
    (folder / "decoder.pt").write_bytes(b"")
    (folder / "decoder.json").write_text(json.dumps({"extra": {"checkpoint_sha256": sha256_file(official)}}))
    assert assets.demo_decoder_path() == folder and shipped_decoder(official, "image") == folder
    # a decoder of another (e.g. retrained) checkpoint is not used for the figure
    (folder / "decoder.json").write_text(json.dumps({"extra": {"checkpoint_sha256": "0" * 64}}))
    assert shipped_decoder(official, "image") is None
