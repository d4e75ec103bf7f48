"""RCDM decoder probe: conditioning pairs, resumable DDPM training, the visualization figure, CLI errors."""
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
from jepa_eval.decoder.features import block_boxes, conditioning_batch, crop_boxes, pool_tokens
from jepa_eval.decoder.visualize import GAP, HEADER
from jepa_eval.errors import UserError
from jepa_eval.models import JEPAPredictor, build_encoder

TIMM = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
TINY = """
size: 16
unet: {block_out_channels: [8, 16], layers_per_block: 1, norm_num_groups: 4}
train: {batch_size: 2, max_steps: 3, warmup_steps: 1, sample_every: 2, save_every: 2, ddim_steps: 2,
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
    """A random-init checkpoint in the official layout, with a predictor."""
    torch.manual_seed(0)
    enc = build_encoder(192, 1, 8, 32)
    pred = JEPAPredictor(16, 192, 48, 1, num_heads=3)
    sd = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    path = tmp_path_factory.mktemp("ck") / "random.pth.tar"
    torch.save({"encoder": sd(enc), "predictor": sd(pred), "target_encoder": sd(enc), "epoch": 0}, path)
    return path


def test_conditioning_pairs_cut_the_pooled_blocks():
    ck = load_checkpoint(TIMM)
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # a 2x2-patch block at patch rows 1-2, cols 2-3 for image 0 and rows 0-1, cols 0-1 for image 1
    idx = torch.tensor([[6, 7, 10, 11], [0, 1, 4, 5]])
    boxes = block_boxes(idx, grid_w=4, patch=8)
    assert boxes.tolist() == [[16, 8, 32, 24], [0, 0, 16, 16]]
    # a box the size of the output is cut exactly
    assert torch.allclose(crop_boxes(imgs, boxes, 16)[0], imgs[0, :, 8:24, 16:32], atol=1e-5)
    cond, pix, b = conditioning_batch(ck.target_encoder, imgs, [idx, idx.flip(0)], patch=8, size=16)
    assert cond.shape == (4, 192) and pix.shape == (4, 3, 16, 16) and torch.equal(b[:2], boxes)
    tokens = ck.target_encoder(imgs)
    assert torch.allclose(cond[0], tokens[0, idx[0]].mean(0), atol=1e-5)
    assert torch.allclose(cond[3], pool_tokens(tokens, idx.flip(0))[1], atol=1e-5)
    assert pix.min() >= -1 and pix.max() <= 1
    whole, pix_img, _ = conditioning_batch(ck.target_encoder, imgs, [idx], 8, 24, condition="image")
    assert torch.allclose(whole, tokens.mean(1), atol=1e-5) and pix_img.shape == (2, 3, 24, 24)


def test_training_resumes_exactly_and_writes_samples(tmp_path, tiny_cfg):
    ck = load_checkpoint(TIMM)
    ds = get_dataset("digits", split="train", image_size=32, max_samples=24)
    short = load_config(str(tiny_cfg), max_steps=2)
    train_decoder(ck, ds, tmp_path / "a", short, device="cpu", log=lambda s: None)
    with pytest.raises(UserError, match="--resume"):
        train_decoder(ck, ds, tmp_path / "a", short, device="cpu")
    full = load_config(str(tiny_cfg), max_steps=3)
    res = train_decoder(ck, ds, tmp_path / "a", full, resume=True, device="cpu", log=lambda s: None)
    assert res["steps"] == 3
    ref = train_decoder(ck, ds, tmp_path / "b", full, device="cpu")
    resumed = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    straight = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 3
    for k, v in straight["model"].items():
        assert torch.allclose(resumed["model"][k], v, atol=1e-6), k
    # the saved decoder holds the EMA weights, which differ from the raw ones
    dec = load_decoder(tmp_path / "a")
    assert dec.spec.size == 16 and dec.spec.cond_dim == 192
    assert any(not torch.equal(p, resumed["model"][k]) for k, p in dec.state_dict().items())
    # grids: real crops above, samples below, 4 crops of 16 px with 1 px padding
    grids = sorted((tmp_path / "a" / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_000002.png", "step_000003.png"]
    assert Image.open(grids[-1]).size == (4 * 17 + 1, 2 * 17 + 1)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["loss"])


def test_cli_train_and_visualize_figure(tmp_path, tiny_cfg, official, capsys):
    out = tmp_path / "dec"
    assert main(["decoder", "train", "--checkpoint", str(official), "--dataset", "digits", "--out", str(out),
                 "--config", str(tiny_cfg), "--max-steps", "1"]) == 0
    assert (out / "decoder.pt").is_file() and (out / "state.pt").is_file()
    fig = tmp_path / "fig.png"
    assert main(["decoder", "visualize", "--checkpoint", str(official), "--decoder", str(out), "--dataset",
                 "digits", "--out", str(fig), "--n-images", "2", "--n-samples", "2", "--n-targets", "2",
                 "--ddim-steps", "2", "--panel", "48"]) == 0
    assert "4 rows x 7 panels" in capsys.readouterr().out
    img = np.asarray(Image.open(fig).convert("RGB"))
    rows, cols, panel = 4, 3 + 2 * 2, 48
    assert img.shape == (HEADER + rows * panel + (rows + 1) * GAP, cols * panel + (cols + 1) * GAP, 3)
    # first row: the original panel is the dataset image scaled up; the context panel grays out the rest
    ds = get_dataset("digits", split="test", image_size=32)
    pick = int(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[0])
    y0, x0 = HEADER + GAP, GAP
    original = img[y0:y0 + panel, x0:x0 + panel].astype(int)
    expected = (ds[pick][0] * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
                + torch.tensor([0.485, 0.456, 0.406])[:, None, None]).clamp(0, 1)
    expected = (expected.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, ::2, ::2].permute(1, 2, 0) * 255)
    assert np.abs(original - expected.round().numpy().astype(int)).max() <= 1
    context = img[y0:y0 + panel, x0 + panel + GAP:x0 + 2 * panel + GAP]
    assert (context == 128).all(-1).any() and not (original == 128).all(-1).all()
    # the target panel and all sample panels carry the box outline (green / orange)
    for c in range(2, cols):
        x = x0 + c * (panel + GAP)
        p = img[y0:y0 + panel, x:x + panel].astype(int)
        greenish = (p[..., 1] > 140) & (p[..., 2] < 60)
        assert greenish.sum() >= 4 * 4, f"column {c} has no box outline"


def test_visualize_errors(tmp_path, tiny_cfg, official, capsys):
    # timm checkpoints have no predictor
    out = tmp_path / "dec"
    assert main(["decoder", "train", "--checkpoint", TIMM, "--dataset", "digits", "--out", str(out),
                 "--config", str(tiny_cfg), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["decoder", "visualize", "--checkpoint", TIMM, "--decoder", str(out), "--dataset", "digits",
                 "--out", str(tmp_path / "f.png")]) == 2
    assert "no predictor" in capsys.readouterr().err
    # a decoder trained for another checkpoint
    assert main(["decoder", "visualize", "--checkpoint", str(official), "--decoder", str(out), "--dataset",
                 "digits", "--out", str(tmp_path / "f.png")]) == 2
    assert "another checkpoint" in capsys.readouterr().err
    assert main(["decoder", "visualize", "--checkpoint", str(official), "--decoder", str(tmp_path / "none"),
                 "--dataset", "digits", "--out", str(tmp_path / "f.png")]) == 2
    assert "not a trained decoder folder" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_config_mistakes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batchsize: 4}\n")
    with pytest.raises(UserError, match="unknown key.*batchsize"):
        load_config(str(bad))
    with pytest.raises(UserError, match="neither a packaged config"):
        load_config("nope")
    assert load_config("cpu").size == 32 and 64 <= load_config("gpu").size <= 128
    odd = tmp_path / "odd.yaml"
    odd.write_text("size: 18\nunet: {block_out_channels: [8, 16, 16], norm_num_groups: 4}\n")
    ck = load_checkpoint(TIMM)
    with pytest.raises(UserError, match="divisible by 4"):
        train_decoder(ck, get_dataset("digits", image_size=32, max_samples=4), tmp_path / "o", load_config(str(odd)))
