"""Training monitors: their values on known inputs, that they leave training bit-identical, and the
collapse warning (fires on a collapsing run, stays silent on the shipped configuration)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_eval.cli import main as cli
from pretrain.config import load_config
from pretrain.monitors import (MONITOR_COLUMNS, MonitorConfig, TrainingMonitor, input_dependence,
                               pooled_std, prediction_std_ratio)
from pretrain.train import LOG_COLUMNS, build_models, main
from _states import assert_same_training_state

# tiny-digits: 128 images / batch 32 = 4 steps per epoch, 2 epochs: 8 steps
TINY = dict(data={"max_samples": 128}, optimization={"epochs": 2, "warmup": 0.5})


def _rows(out) -> list[dict]:
    with open(out / "train-log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the measures on known inputs
def test_measures_on_known_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 16, 8, generator=g).expand(10, -1, -1)       # every image gives the same tokens
    assert input_dependence(same) == 0.0
    noise = torch.randn(400, 49, 8, generator=g)                          # iid: images vary like positions
    assert input_dependence(noise) == pytest.approx(1.0, abs=0.05)
    per_image = torch.randn(10, 1, 8, generator=g).expand(-1, 16, -1)     # constant within an image
    assert input_dependence(per_image) == float("inf")
    assert input_dependence(torch.zeros(4, 9, 3)) == 0.0
    pooled = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])          # std 1.633 and 0
    assert pooled_std(pooled) == pytest.approx(np.std([0, 2, 4]) / 2)
    target = torch.randn(6, 5, 8, generator=g)
    assert prediction_std_ratio(0.5 * target + 3.0, target) == pytest.approx(0.5)
    assert prediction_std_ratio(torch.ones_like(target), target) == 0.0


class _Images:
    """A labelled dataset of generated images; ``constant`` makes them all the same."""

    def __init__(self, n: int, constant: bool) -> None:
        rng = np.random.default_rng(0)
        self.pixels = [np.full((16, 16, 3), 128, np.uint8) if constant else
                       rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
        self.targets = np.arange(n) % 4

    def __len__(self) -> int:
        return len(self.pixels)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.pixels[i])


def _monitor(constant: bool, knn: bool = False) -> TrainingMonitor:
    cfg = load_config("tiny-digits")
    return TrainingMonitor(MonitorConfig(images=24, pred_images=8, knn=knn, knn_bank=24, knn_k=3),
                           _Images(48, constant), 16, cfg.model.patch_size, cfg.mask, torch.device("cpu"))


def test_monitor_on_constant_and_varied_images() -> None:
    enc, pred, tgt = build_models(load_config("tiny-digits"))
    flat = _monitor(constant=True).measure(enc, pred, tgt)
    assert flat["input_dep"] == 0.0 and flat["feat_std"] == pytest.approx(0.0, abs=1e-6)
    assert flat["rankme"] == pytest.approx(1.0, abs=1e-3)  # every pooled vector is the same: rank 1
    varied = _monitor(constant=False, knn=True).measure(enc, pred, tgt)
    assert varied["input_dep"] > 0.05 and varied["feat_std"] > 1e-3 and varied["rankme"] > 2.0
    assert varied["pred_std_ratio"] > 0 and 0.0 <= varied["knn"] <= 100.0
    assert set(varied) == set(MONITOR_COLUMNS)


def test_measure_restores_modes_and_rng() -> None:
    enc, pred, tgt = build_models(load_config("tiny-digits"))
    pred.eval()  # a mixed state must come back as it was, module by module
    enc.blocks[0].eval()
    before = [m.training for model in (enc, pred, tgt) for m in model.modules()]
    monitor = _monitor(constant=False)
    torch.manual_seed(3)
    monitor.measure(enc, pred, tgt)
    after_rng = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after_rng, torch.rand(1)), "the monitor consumed the global RNG"
    assert [m.training for model in (enc, pred, tgt) for m in model.modules()] == before


# ---------------------------------------------------------------- training is unchanged
def test_monitors_leave_training_bit_identical(tmp_path) -> None:
    off = main(load_config("tiny-digits", **TINY, monitor={"every": 0}), tmp_path / "off", progress=False)
    on = main(load_config("tiny-digits", **TINY, monitor={"every": 2, "knn": True, "knn_bank": 32}),
              tmp_path / "on", progress=False)
    assert off["step"] == on["step"] == 8 and on["monitor_seconds"] > 0 == off["monitor_seconds"]
    a = torch.load(tmp_path / "off" / "jepa-latest.pth.tar", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "on" / "jepa-latest.pth.tar", map_location="cpu", weights_only=True)
    assert_same_training_state(a, b, "with monitors on")
    rows_off, rows_on = _rows(tmp_path / "off"), _rows(tmp_path / "on")
    assert list(rows_on[0]) == LOG_COLUMNS
    assert [r["loss"] for r in rows_off] == [r["loss"] for r in rows_on if r["loss"]]
    # a step-0 reference row, then a value every 2 steps; other rows leave the columns empty
    assert rows_on[0]["step"] == "0" and rows_on[0]["loss"] == ""
    measured = [int(r["step"]) for r in rows_on if r["rankme"]]
    assert measured == [0, 2, 4, 6, 8]
    assert all(r["knn"] for r in rows_on if r["rankme"]) and not any(r["knn"] for r in rows_off)


# ---------------------------------------------------------------- the collapse warning
def test_collapse_warning_fires_once(tmp_path, capsys) -> None:
    # EMA momentum 0 (targets = the context encoder) with a huge learning rate collapses within steps
    cfg = load_config("tiny-digits", data={"max_samples": 256}, monitor={"every": 4},
                      optimization={"epochs": 4, "warmup": 0.0, "start_lr": 0.5, "lr": 0.5, "final_lr": 0.5,
                                    "ema": [0.0, 0.0]})
    main(cfg, tmp_path, progress=False, max_steps=24)
    err = capsys.readouterr().err
    assert err.count("WARNING: representation collapse") == 1 and "RankMe" in err, err
    rankmes = [float(r["rankme"]) for r in _rows(tmp_path) if r["rankme"]]
    assert len(rankmes) == 7 and min(rankmes[1:]) < 0.5 * rankmes[0]  # it warned about a real drop


def test_check_flags_input_independent_targets() -> None:
    enc, pred, tgt = build_models(load_config("tiny-digits"))
    varied, flat = _monitor(constant=False), _monitor(constant=True)
    reference = varied.measure(enc, pred, tgt)
    assert varied.check(0, reference) is None and varied.check(5, reference) is None  # healthy: silent
    line = varied.check(10, flat.measure(enc, pred, tgt))  # targets that no longer depend on the image
    assert line is not None and "step 10" in line and "input dependence 0 " in line and "\n" not in line
    assert varied.check(15, flat.measure(enc, pred, tgt)) is None  # one line per run, not one per step


def test_no_warning_on_the_shipped_config(tmp_path, capsys) -> None:
    # the shipped model, masks and schedules; a smaller image subset and held batch keep the test short
    cfg = load_config("tiny-fashion-mnist", data={"max_samples": 640},
                      monitor={"every": 5, "images": 64, "pred_images": 32})
    main(cfg, tmp_path, progress=False, max_steps=20)
    assert "WARNING" not in capsys.readouterr().err
    assert len([r for r in _rows(tmp_path) if r["rankme"]]) == 5


def test_cli_flags(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(["pretrain", "--config", "tiny-digits", "--out", str(out), "--max-steps", "3",
                "--monitor-every", "3", "--monitor-knn"]) == 0
    measured = [r for r in _rows(out) if r["rankme"]]
    assert [r["step"] for r in measured] == ["0", "3"] and all(r["knn"] for r in measured)
    assert cli(["pretrain", "--config", "tiny-digits", "--out", str(tmp_path / "x"), "--monitor-every", "-1"]) == 2
    assert "--monitor-every" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitor:\n  rankme_drop: 2\n")
    assert cli(["pretrain", "--config", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "rankme_drop" in capsys.readouterr().err
