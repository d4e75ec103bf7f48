"""RankMe and CKA against known cases; blocksPOOL; the analysis tasks end to end on digits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jepa_eval.analysis import cka_matrix, linear_cka, rankme
from jepa_eval.errors import UserError

# a small random-init timm ViT: 3 blocks, width 64, 16 patches of 8x8 on 32x32 digits
TINY = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=3,embed_dim=64,num_heads=2"


def _rank_r(n: int, d: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    return u @ v.T  # r equal singular values, the rest zero


def test_rankme_of_known_rank():
    for r in (1, 5, 17):
        assert rankme(_rank_r(200, 64, r)) == pytest.approx(r, rel=1e-3)
    # unequal singular values give a smaller effective rank than the algebraic one
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(100, 10)))
    x = u * np.array([10.0] + [0.1] * 9)
    assert 1.0 < rankme(x) < 3.0
    # the N < D branch (Gram of rows) agrees
    assert rankme(_rank_r(30, 300, 7)) == pytest.approx(7, rel=1e-3)


def test_rankme_rejects_bad_input():
    with pytest.raises(UserError):
        rankme(np.ones(5))
    with pytest.raises(UserError):
        rankme(np.full((4, 3), np.nan))


def test_cka_identity_orthogonal_and_scaling_invariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x @ q + 3.0) == pytest.approx(1.0, abs=1e-10)  # scale + shift
    y = rng.normal(size=(300, 20))
    assert linear_cka(x, y) < 0.2  # independent noise is far from 1
    assert linear_cka(x, y) == pytest.approx(linear_cka(x @ q, 2.0 * y), abs=1e-10)
    # not invariant to a general (anisotropic) linear map
    assert linear_cka(x, x * np.linspace(0.1, 10, 20)) < 0.99
    m = cka_matrix([x, x @ q, y])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] < 0.2
    with pytest.raises(UserError):
        linear_cka(x, y[:10])


def test_blocks_pool_matches_last_and_concat_pool():
    from jepa_eval.features import check_pooling, pool
    from jepa_eval.models import build_encoder
    torch.manual_seed(0)
    enc = build_encoder(192, 3, 8, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        blocks = pool(enc, x, "blocksPOOL")
        assert blocks.shape == (2, 3, 192)
        torch.testing.assert_close(blocks[:, -1], pool(enc, x, "lastPOOL"))
        torch.testing.assert_close(blocks[:, 1:].flatten(1), pool(enc, x, "concatPOOL2"))
    check_pooling("blocksPOOL")
    with pytest.raises(UserError):
        check_pooling("blockPOOL")


@pytest.fixture()
def digits_run(tmp_path):
    battery = tmp_path / "analysis.yaml"
    battery.write_text("""
description: analysis tasks on digits
tasks:
  - {task: layerwise, dataset: digits, max_samples: {train: 600, test: 200}, params: {probe: knn, k: 10}}
  - {task: layerwise, id: layerwise-linear, dataset: digits, max_samples: {train: 600, test: 200},
     params: {probe: linear}}
  - {task: rankme, dataset: digits, max_samples: {train: 600}, pooling: [lastPOOL, concatPOOL2]}
  - {task: cka, dataset: digits, max_samples: {train: 600}, params: {references: [context]}}
""")
    return battery


def test_analysis_tasks_end_to_end_on_digits(tmp_path, digits_run):
    from jepa_eval.results import load
    from jepa_eval.runner import plan, run_in_process
    spec = TINY
    out, cache = tmp_path / "out", tmp_path / "cache"
    paths = run_in_process(plan([spec], str(digits_run), out, cache), progress=False)
    recs = {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in paths}
    assert set(recs) == {"layerwise-digits", "layerwise-linear", "rankme-digits", "cka-digits"}

    knn = recs["layerwise-digits"]
    assert knn["details"]["blocks"] == [0, 1, 2] and len(knn["details"]["top1"]) == 3
    assert knn["primary_metric"] == "top1_last" and knn["metrics"]["top1_last"] == knn["details"]["top1"][-1]
    # random-init ViT features still separate digits well above chance (10 %; measured ~40 %)
    assert all(a > 25 for a in knn["details"]["top1"]), knn["details"]["top1"]
    lin = recs["layerwise-linear"]
    assert lin["details"]["n_train"] == 600 and all(a > 25 for a in lin["details"]["top1"])

    rk = recs["rankme-digits"]["metrics"]
    assert 1 < rk["rankme"] <= 64 and 1 < rk["rankme_concatPOOL2"] <= 128
    assert 0 < rk["rankme_ratio"] <= 1

    cka = recs["cka-digits"]
    layers = np.array(cka["details"]["layers"]["matrix"])
    assert layers.shape == (3, 3) and np.allclose(np.diag(layers), 1) and np.allclose(layers, layers.T)
    assert 0 < cka["metrics"]["cka_first_last"] < 1
    # a timm model has one encoder, so 'context' is the same weights: CKA exactly 1
    assert cka["details"]["models"]["labels"] == ["this [target]", "this [context]"]
    assert cka["metrics"]["cka_vs_this [context]"] == pytest.approx(1.0, abs=1e-6)

    df = load(out)
    assert set(df["task"]) == {"layerwise", "rankme", "cka"}
    # rerun: every record exists, nothing is recomputed
    again = run_in_process(plan([spec], str(digits_run), out, cache), progress=False)
    assert sorted(again) == sorted(paths)


def test_layerwise_refuses_pooled_features(tmp_path):
    from jepa_eval.battery import load_battery
    b = tmp_path / "b.yaml"
    b.write_text("tasks: [{task: layerwise, dataset: digits, pooling: lastPOOL, max_samples: {train: 50, test: 20}}]")
    with pytest.raises(UserError, match="blocksPOOL"):   # at load: before any checkpoint or feature is read
        load_battery(str(b))
