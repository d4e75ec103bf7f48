"""Attentive probe on tokens: finds a class token at a random position, chance on noise, test-blind
selection, resume, validation, one end-to-end run on digits."""
import json

import numpy as np
import pytest
import torch

from jepa_eval.errors import UserError
from jepa_eval.probes.attentive import AttentiveConfig, attentive_probe
from jepa_eval.task import TASKS, build_params


pytestmark = pytest.mark.usefixtures("one_thread")

CODES = np.random.default_rng(11).normal(size=(4, 16)) * 3
FAST = dict(epochs=6, batch_size=32, lrs=[3e-3, 1e-3])


def tokens(n, seed=0, informative=True):
    """Noise tokens; one token at a random position carries the class code (mean pooling dilutes it)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 12, 16))
    if informative:
        x[np.arange(n), rng.integers(0, 12, n)] += CODES[y]
    return x.astype(np.float16), y


def test_finds_the_informative_token():
    torch.manual_seed(0)
    x, y = tokens(480)
    tx, ty = tokens(200, seed=1)
    res = attentive_probe(x, y, tx, ty, AttentiveConfig(**FAST))
    assert res.top1 >= 95.0 and res.top5 is None and len(res.grid) == 2


def test_noise_stays_at_chance_and_selection_ignores_test():
    x, y = tokens(480, informative=False)
    tx, ty = tokens(1000, seed=1, informative=False)
    a = attentive_probe(x, y, tx, ty, AttentiveConfig(**FAST))
    assert 18.0 < a.top1 < 32.0
    b = attentive_probe(x, y, tx, np.random.default_rng(0).permutation(ty), AttentiveConfig(**FAST))
    assert a.chosen == b.chosen and a.grid == b.grid


def test_resume(tmp_path):
    x, y = tokens(200)
    cfg = AttentiveConfig(epochs=3, batch_size=32, lrs=[1e-3])
    full = attentive_probe(x, y, x, y, cfg)

    def stop(epoch):
        if epoch == 0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        attentive_probe(x, y, x, y, cfg, workdir=tmp_path, on_epoch_end=stop)
    seen = []
    resumed = attentive_probe(x, y, x, y, cfg, workdir=tmp_path, on_epoch_end=seen.append)
    assert seen == [1, 2] and resumed.grid == full.grid and resumed.top1 == full.top1


def test_needs_tokens_and_valid_params():
    x, y = tokens(50)
    with pytest.raises(UserError, match="token features"):
        attentive_probe(x.mean(1), y, x.mean(1), y)
    with pytest.raises(UserError, match="does not divide"):
        attentive_probe(x, y, x, y, AttentiveConfig(num_heads=5, epochs=1))
    for params in ({"lrs": []}, {"epochs": 0}, {"weight_decay": -1.0}, {"holdout_fraction": 0.7}):
        with pytest.raises(UserError):
            build_params(TASKS.get("attentive"), params, "test")


def test_end_to_end_on_digits(tmp_path):
    from jepa_eval import runner
    torch.manual_seed(0)
    battery = tmp_path / "b.yaml"
    battery.write_text("tasks:\n  - {task: attentive, dataset: digits, params: {epochs: 4, lrs: [1e-3]}}\n")
    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
    (path,) = runner.run_in_process(runner.plan([spec], str(battery), tmp_path / "out", tmp_path / "cache"),
                                    progress=False)
    rec = json.loads(path.read_text())
    assert rec["pooling"] == "tokens" and rec["selected_on"] == "train-holdout-10%"
    assert rec["metrics"]["top1"] > 30.0 and "top5" in rec["metrics"]


def test_default_head_count_divides_any_width():
    from jepa_eval.probes.attentive import AttentiveProbe
    probe = AttentiveProbe(2352, 10)  # raw 28x28x3 pixels: 2352 // 64 = 36 does not divide 2352
    assert 2352 % probe.pool.num_heads == 0 and probe.pool.num_heads == 28


def test_task_params_extend_the_probe_config_and_take_the_entry_seed():
    from jepa_eval.tasks.attentive import AttentiveTask
    p = build_params(AttentiveTask, {"lrs": [1e-3], "epochs": 2, "holdout_fraction": 0.2}, "entry")
    cfg = p.config(7)
    assert type(cfg) is AttentiveConfig and cfg.seed == 7 and cfg.lrs == [1e-3] and cfg.epochs == 2
    with pytest.raises(UserError, match="beside 'params'"):
        build_params(AttentiveTask, {"seed": 3}, "entry")
