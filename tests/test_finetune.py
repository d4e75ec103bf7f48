"""End-to-end fine-tuning (the 1% row): layer-wise lrs, learning, bit-exact resume, selection on a
hold-out of the subset, parameter checks, and a battery run that extracts no features."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_eval.assets import demo_checkpoint_path
from jepa_eval.checkpoint import load_checkpoint
from jepa_eval.datasets import get_dataset
from jepa_eval.errors import UserError
from jepa_eval.probes.finetune import (FinetuneConfig, FinetuneNet, evaluate, finetune, make_optimizer,
                                       make_scheduler, train)
from jepa_eval.task import TASKS, build_params

pytestmark = pytest.mark.usefixtures("one_thread")
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220)]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_checkpoint(demo_checkpoint_path()).get_encoder("target")   # 28 px, patch 4, depth 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageNet layout, 3 classes told apart by colour (it survives crops, flips and RandAugment)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(COLOURS):
            (root / split / f"n0{c}").mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 30, (28, 28, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"n0{c}" / f"n0{c}_{i}.png")
    return root


def data(folder):
    return (get_dataset("imagefolder", str(folder), "train", image_size=28),
            get_dataset("imagefolder", str(folder), "val", image_size=28))


def test_layer_decay_gives_mae_per_layer_lrs(encoder):
    net = FinetuneNet(encoder, 3)
    cfg = FinetuneConfig(epochs=10, warmup_epochs=2, layer_decay=0.5)
    opt = make_optimizer(net, cfg, 1e-2)
    make_scheduler(opt, cfg, 1e-2, steps_per_epoch=3).step_update(6)   # end of warmup: the peak lr
    lr = {n: g["lr"] for g in opt.param_groups for n, p in net.named_parameters() if any(p is q for q in g["params"])}
    wd = {n: g["weight_decay"] for g in opt.param_groups for n, p in net.named_parameters()
          if any(p is q for q in g["params"])}
    depth = len(net.vit.blocks)
    assert depth == 4 and len(lr) == len(list(net.parameters()))
    for name, value in lr.items():
        if name.startswith(("head.", "vit.norm.")):
            want = 1e-2
        elif name.startswith("vit.blocks."):
            want = 1e-2 * 0.5 ** (depth - int(name.split(".")[2]))
        else:
            assert name.startswith(("vit.patch_embed.", "vit.pos_embed")), name
            want = 1e-2 * 0.5 ** (depth + 1)
        assert value == pytest.approx(want, rel=1e-9), name
    assert wd["head.weight"] == wd["vit.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["head.bias"] == wd["vit.norm.weight"] == wd["vit.pos_embed"] == 0.0
    make_scheduler(opt, cfg, 1e-2, steps_per_epoch=3).step_update(1)   # warmup: 1/6 of the peak, same ratios
    assert opt.param_groups[0]["lr"] / opt.param_groups[-1]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert opt.param_groups[-1]["lr"] == pytest.approx(1e-2 / 6)


def test_loss_decreases_and_accuracy_beats_chance(encoder, folder):
    train_ds, test_ds = data(folder)
    # no RandAugment/erasing here (Invert and Solarize recolour images); the resume test runs them
    cfg = FinetuneConfig(blrs=[0.2], epochs=6, warmup_epochs=1, batch_size=8, drop_path=0.1, rand_augment="",
                         re_prob=0.0)
    net = FinetuneNet(encoder, 3, drop_path=cfg.drop_path)
    losses = train(net, train_ds, np.arange(len(train_ds)), cfg, 0.2, 0, 28, CPU)
    assert len(losses) == 6 * 3
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    top1, _ = evaluate(net, test_ds, np.arange(len(test_ds)), CPU)
    assert top1 > 70.0
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 load_checkpoint(demo_checkpoint_path()).target_encoder.state_dict().values()))
