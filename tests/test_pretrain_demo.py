"""The demo checkpoint shipped in the package: official layout, small, loads offline with its config."""
from __future__ import annotations

import torch

from jepa_eval import load_checkpoint
from jepa_eval.assets import DEMO_DIR, demo_checkpoint_path
from pretrain.checkpointing import OFFICIAL_TOP_KEYS
from pretrain.config import config_from_dict


def test_demo_is_small_official_and_loads() -> None:
    path = demo_checkpoint_path()
    assert path.stat().st_size <= 5 * 1024 * 1024
    for name in ("config.yaml", "train-log.csv", "README.md"):
        assert (DEMO_DIR / name).is_file(), name
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(OFFICIAL_TOP_KEYS) <= set(state)
    assert all(k.startswith("module.") for key in ("encoder", "predictor", "target_encoder") for k in state[key])
    ck = load_checkpoint(path)
    assert ck.meta["source_format"] == "jepa-eval" and ck.meta["has_predictor"]
    cfg = config_from_dict(ck.meta["config"])
    assert cfg.data.dataset == "fashion-mnist" and ck.meta["img_size"] == cfg.data.img_size
    assert ck.meta["heads"] == cfg.model.num_heads and ck.meta["depth"] == cfg.model.depth
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    with torch.no_grad():
        tokens = ck.target_encoder(x)
    grid = cfg.data.img_size // cfg.model.patch_size
    assert tokens.shape == (2, grid * grid, cfg.model.width) and torch.isfinite(tokens).all()
    # trained weights, not an initialization: the EMA target differs from the context encoder
    assert not torch.equal(state["encoder"]["module.blocks.0.mlp.fc1.weight"],
                           state["target_encoder"]["module.blocks.0.mlp.fc1.weight"])
