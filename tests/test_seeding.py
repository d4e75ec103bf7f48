"""Scoped RNGs: ``seeded``/``seeded_iter`` draw what ``torch.manual_seed`` would have, and every library entry
point that seeds leaves the caller's global torch RNG exactly where it was, while giving the same numbers for
the same seed whatever the caller's stream."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from jepa_eval.checkpoint import load_checkpoint
from jepa_eval.datasets import get_dataset
from jepa_eval.seeding import seeded, seeded_iter

pytestmark = pytest.mark.usefixtures("one_thread")
TIMM = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"


def calls_leave_rng_alone(fn, caller_seeds=(11, 12)):
    """Run ``fn`` once per caller seed; assert the caller's RNG state is the same after each call as before
    it, and return the results (one per caller stream)."""
    results = []
    for s in caller_seeds:
        torch.manual_seed(s)
        before = torch.get_rng_state()
        results.append(fn())
        assert torch.equal(torch.get_rng_state(), before), "the call moved the caller's global RNG"
    return results


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------- the helpers
def test_seeded_draws_as_manual_seed_and_restores_the_caller():
    torch.manual_seed(5)
    expected = torch.rand(4), torch.randn(3)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    with seeded(5):
        got = torch.rand(4), torch.randn(3)
    assert_same(got, expected)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(KeyError), seeded(5):
        torch.rand(2)
        raise KeyError
    assert torch.equal(torch.get_rng_state(), before)     # restored on error too


def _draws(n):
    for i in range(n):
        yield i, torch.rand(2)


def test_seeded_iter_is_the_stream_after_manual_seed_and_the_consumer_keeps_its_own():
    torch.manual_seed(7)
    expected = list(_draws(3))
    torch.manual_seed(1)
    consumer_alone = [torch.rand(1) for _ in range(3)]
    torch.manual_seed(1)
    got, consumer = [], []
    for item in seeded_iter(7, _draws(3)):
        got.append(item)
        consumer.append(torch.rand(1))        # the code between items draws from the caller's stream
    assert_same(got, expected)
    assert_same(consumer, consumer_alone)
    after = torch.rand(1)
    torch.manual_seed(1)
    assert_same(after, [torch.rand(1) for _ in range(4)][-1])   # the caller's stream moved by its own draws only


def test_seeded_iter_abandoned_early_leaves_the_caller_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    it = seeded_iter(0, _draws(5))
    next(it)
    assert torch.equal(torch.get_rng_state(), before)
    del it
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_forks_and_seeds_cuda_once_it_is_in_use():
    torch.zeros(1, device="cuda")             # CUDA in use
    torch.cuda.manual_seed_all(5)
    expected = torch.rand(4, device="cuda")
    torch.manual_seed(99)
    before = torch.cuda.get_rng_state()
    with seeded(5):
        got = torch.rand(4, device="cuda")
    assert torch.equal(got, expected) and torch.equal(torch.cuda.get_rng_state(), before)


# ---------------------------------------------------------------- the library's entry points
def test_attentive_probe():
    from jepa_eval.probes.attentive import AttentiveConfig, attentive_probe
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4, 16)).astype(np.float32), rng.integers(0, 3, 60)
    cfg = AttentiveConfig(lrs=[1e-2, 1e-3], epochs=2, batch_size=16)
    a, b = calls_leave_rng_alone(lambda: attentive_probe(x, y, x[:20], y[:20], cfg).grid)
    assert_same(a, b)


def test_random_init_checkpoint():
    a, b = calls_leave_rng_alone(lambda: load_checkpoint(TIMM).get_encoder("target").state_dict())
    assert_same(a, b)
    other = load_checkpoint(TIMM, seed=1).get_encoder("target").state_dict()
    assert not torch.equal(a["model.pos_embed"], other["model.pos_embed"])   # the seed is what fixes the weights


def test_linear_paper_recipe_batches():
    from jepa_eval.tasks.linear import augmented_batches
    ck = load_checkpoint(TIMM)

    def epochs():
        ds = get_dataset("digits", split="train", image_size=32, max_samples=40)
        ctx = types.SimpleNamespace(checkpoint=ck, encoder="target", device=torch.device("cpu"),
                                    dataset=lambda role: ds)
        batches = augmented_batches(ctx, "lastPOOL", 16, seed=3)(np.arange(30))
        return [list(batches(e)) for e in range(2)]

    a, b = calls_leave_rng_alone(epochs)
    assert_same(a, b)
    assert not torch.equal(a[0][0][0], a[1][0][0])    # each epoch has its own crops and order


def test_finetune():
    from jepa_eval.assets import demo_checkpoint_path
    from jepa_eval.probes.finetune import FinetuneConfig, finetune
    encoder = load_checkpoint(demo_checkpoint_path()).get_encoder("target")
    ds = get_dataset("digits", split="train", image_size=28, max_samples=16)
    cfg = FinetuneConfig(blrs=[0.1], epochs=2, warmup_epochs=1, batch_size=8, drop_path=0.2)
    a, b = calls_leave_rng_alone(lambda: finetune(encoder, ds, np.arange(16), ds, cfg, 10, 28).losses)
    assert_same(a, b)


def test_decoder_training(tmp_path):
    from jepa_eval.decoder import load_config, train_decoder
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text("size: 16\nunet: {block_out_channels: [8, 16], layers_per_block: 1, norm_num_groups: 4}\n"
                        "train: {batch_size: 8, max_steps: 1, warmup_steps: 1, ddim_steps: 2, grid_size: 2,"
                        " max_samples: 16}\n")
    ck = load_checkpoint(TIMM)
    ds = get_dataset("digits", split="train", image_size=32, max_samples=16)
    runs = iter(range(2))

    def train():
        out = tmp_path / f"run{next(runs)}"
        res = train_decoder(ck, ds, out, load_config(str(cfg_path)), device="cpu", log=lambda s: None)
        return res["losses"], torch.load(out / "state.pt", weights_only=True)["model"]

    a, b = calls_leave_rng_alone(train)
    assert_same(a, b)


def test_pretraining_models_and_run(tmp_path):
    from pretrain.config import load_config
    from pretrain.train import build_models, main
    cfg = load_config("tiny-digits", data={"max_samples": 64}, optimization={"epochs": 1})
    a, b = calls_leave_rng_alone(lambda: [m.state_dict() for m in build_models(cfg)])
    assert_same(a, b)
    runs = iter(range(2))
    calls_leave_rng_alone(lambda: main(cfg, tmp_path / f"run{next(runs)}", max_steps=1, progress=False))
