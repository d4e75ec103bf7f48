"""Property tests of the multi-block mask collator (docs/protocols.md §2)."""
from __future__ import annotations

import math

import pytest
import torch

from pretrain.masks import MaskConfig, MultiBlockMaskCollator

GRIDS = [(224, 16, MaskConfig()),                                   # the released 14x14 setting
         (28, 4, MaskConfig(min_keep=4)),                           # tiny-fashion-mnist's 7x7 grid
         (16, 4, MaskConfig(pred_mask_scale=(0.15, 0.25), npred=2, min_keep=2))]


def _tolerance(n: int, scale: tuple[float, float], aspect: tuple[float, float], grid: int) -> tuple[float, float]:
    """Bounds on h*w: the sampler rounds sqrt(keep*ar) and sqrt(keep/ar) to integers and clips to the grid."""
    lo_keep, hi_keep = int(n * scale[0]), int(n * scale[1])
    hi_ar = max(aspect[1], 1 / aspect[0])
    lo = (math.sqrt(lo_keep / hi_ar) - 0.5) ** 2
    hi = min((math.sqrt(hi_keep * hi_ar) + 0.5) * (math.sqrt(hi_keep * hi_ar) + 0.5), n)
    return max(lo, 1), hi


@pytest.mark.parametrize("size,patch,cfg", GRIDS)
def test_indices_overlap_and_sizes(size: int, patch: int, cfg: MaskConfig) -> None:
    col = MultiBlockMaskCollator(size, patch, cfg, seed=3)
    grid = size // patch
    n = grid * grid
    for _ in range(6):
        enc, pred = col.sample(6)
        assert len(enc) == cfg.nenc and len(pred) == cfg.npred
        for m in enc + pred:
            assert m.dtype == torch.int64 and m.shape[0] == 6
            assert int(m.min()) >= 0 and int(m.max()) < n
            assert all(len(set(row.tolist())) == len(row) for row in m)  # no duplicate index in a block
        # all target blocks of a batch have the same size (drawn once per batch) and are whole rectangles
        tsize = pred[0].shape[1]
        lo, hi = _tolerance(n, cfg.pred_mask_scale, cfg.aspect_ratio, grid)
        assert lo <= tsize <= hi, (tsize, lo, hi)
        for m in pred:
            assert m.shape[1] == tsize
            rows, cols = m // grid, m % grid
            h = rows.max(1).values - rows.min(1).values + 1
            w = cols.max(1).values - cols.min(1).values + 1
            assert torch.equal(h * w, torch.full_like(h, tsize))
        assert 1 <= enc[0].shape[1] <= int(n * cfg.enc_mask_scale[1])
        for b in range(6):
            context = set(enc[0][b].tolist())
            targets = set().union(*(set(m[b].tolist()) for m in pred))
            assert not context & targets, "context block overlaps a target block"


def test_released_defaults_keep_more_than_min_keep() -> None:
    col = MultiBlockMaskCollator(224, 16, MaskConfig(), seed=0)
    for _ in range(10):
        enc, _ = col.sample(8)
        assert enc[0].shape[1] > 10


def test_block_positions_differ_per_image_sizes_per_batch() -> None:
    enc, pred = MultiBlockMaskCollator(224, 16, MaskConfig(), seed=0).sample(16)
    assert len({tuple(r.tolist()) for r in pred[0]}) > 1  # positions per image
    sizes = {m.shape[1] for m in pred}
    assert len(sizes) == 1


def test_allow_overlap_lets_context_cover_targets() -> None:
    col = MultiBlockMaskCollator(224, 16, MaskConfig(allow_overlap=True, enc_mask_scale=(1.0, 1.0)), seed=0)
    enc, pred = col.sample(4)
    assert enc[0].shape[1] == 14 * 14  # the whole grid, targets included
    assert set(pred[0][0].tolist()) <= set(enc[0][0].tolist())


def test_call_stacks_batch_and_masks() -> None:
    col = MultiBlockMaskCollator(28, 4, MaskConfig(min_keep=4), seed=1)
    batch = [(torch.randn(3, 28, 28), i) for i in range(5)]
    (imgs, labels), enc, pred = col(batch)
    assert imgs.shape == (5, 3, 28, 28) and labels.tolist() == list(range(5))
    assert all(m.shape[0] == 5 for m in enc + pred)


def test_determinism_from_state() -> None:
    a = MultiBlockMaskCollator(224, 16, MaskConfig(), seed=7)
    for _ in range(3):
        a.sample(4)
    state = a.state_dict()
    expected = a.sample(4)
    b = MultiBlockMaskCollator(224, 16, MaskConfig(), seed=0)
    b.load_state_dict(state)
    got = b.sample(4)
    for x, y in zip(expected[0] + expected[1], got[0] + got[1]):
        assert torch.equal(x, y)
    other = MultiBlockMaskCollator(224, 16, MaskConfig(), seed=8)
    other.load_state_dict({**state, "seed": 8})
    assert any(not torch.equal(x, y) for x, y in zip(expected[1], other.sample(4)[1]))


def test_min_keep_larger_than_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMaskCollator(16, 8, MaskConfig(min_keep=10))


# ---------------------------------------------------------------- mask kinds of the ablation
def test_random_kind_keeps_the_multiblock_shapes_and_disjointness() -> None:
    cfg = MaskConfig(min_keep=4)
    block = MultiBlockMaskCollator(28, 4, cfg, seed=5)
    rand = MultiBlockMaskCollator(28, 4, MaskConfig(min_keep=4, kind="random"), seed=5)
    scattered = 0
    for _ in range(5):
        (benc, bpred), (renc, rpred) = block.sample(8), rand.sample(8)
        assert [m.shape for m in renc] == [m.shape for m in benc]   # same number of context tokens
        assert [m.shape for m in rpred] == [m.shape for m in bpred]  # same target sizes
        for b in range(8):
            context = renc[0][b].tolist()
            assert len(set(context)) == len(context) and min(context) >= 0 and max(context) < 49
            for m in rpred:
                target = m[b].tolist()
                assert len(set(target)) == len(target) and not set(target) & set(context)
                rows, cols = m[b] // 7, m[b] % 7
                area = int((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
                scattered += area > len(target)  # not a filled rectangle
    assert scattered > 100  # scattered patches, not blocks (a block fills its bounding box)


def test_single_block_kind_and_validation() -> None:
    from jepa_eval.errors import UserError
    from pretrain.config import load_config
    col = MultiBlockMaskCollator(28, 4, MaskConfig(min_keep=4, kind="single_block", npred=1,
                                                   pred_mask_scale=(0.6, 0.6)), seed=2)
    enc, pred = col.sample(6)
    assert len(pred) == 1 and pred[0].shape[1] >= 20  # one large block (>= 40 % of 49 patches)
    for b in range(6):
        assert not set(enc[0][b].tolist()) & set(pred[0][b].tolist())
    for bad, match in (({"kind": "blocks"}, "mask.kind must be one of"),
                       ({"kind": "single_block"}, "npred to 1"),
                       ({"kind": "random", "nenc": 2}, "nenc 1")):
        with pytest.raises(UserError, match=match):
            load_config("tiny-fashion-mnist", mask=bad)


def test_ablation_variants_share_the_step_budget() -> None:
    from benchmarks.mask_ablation import variant_config
    from pretrain.data import build_dataset
    for kind, steps in (("multiblock", 7), ("random", 30), ("single_block", 45)):
        cfg = variant_config("tiny-digits", kind, steps, 0.6)
        ipe = len(build_dataset(cfg.data, seed=cfg.meta.seed)) // cfg.data.batch_size
        o = cfg.optimization
        assert int(o.ipe_scale * o.epochs * ipe) == steps and o.epochs * ipe >= steps  # schedules end at `steps`
        assert cfg.mask.kind == kind and cfg.mask.npred == (1 if kind == "single_block" else 2)
    assert variant_config("tiny-digits", "single_block", 7, 0.6).mask.pred_mask_scale == (0.6, 0.6)
