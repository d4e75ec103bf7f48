"""Pretraining on sklearn digits at 16 px: official checkpoint layout, exact resume, CSV log, CLI errors."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from jepa_eval import load_checkpoint
from jepa_eval.cli import main as cli
from pretrain.checkpointing import OFFICIAL_TOP_KEYS
from pretrain.config import available_configs, load_config
from pretrain.train import LOG_COLUMNS, build_optimizer, build_models, main, schedules
from _states import assert_same_training_state

# 128 images / batch 32 = 4 steps per epoch, 2 epochs: 8 steps in all
TINY = dict(data={"max_samples": 128}, optimization={"epochs": 2, "warmup": 0.5})


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summary = main(load_config("tiny-digits", **TINY), out, progress=False)
    return out, summary


def test_writes_official_layout_that_load_checkpoint_reads(full_run) -> None:
    out, summary = full_run
    assert summary["step"] == summary["total_steps"] == 8
    for name in ("jepa-latest.pth.tar", "jepa-ep1.pth.tar", "jepa-ep2.pth.tar", "config.yaml", "train-log.csv"):
        assert (out / name).is_file(), name
    state = _state(out / "jepa-latest.pth.tar")
    assert set(OFFICIAL_TOP_KEYS) <= set(state)
    assert state["epoch"] == 2 and state["batch_size"] == 32 and state["world_size"] == 1
    for key in ("encoder", "predictor", "target_encoder"):
        assert all(k.startswith("module.") for k in state[key]), key
    assert "module.pos_embed" in state["encoder"] and "module.predictor_pos_embed" in state["predictor"]
    assert state["opt"]["state"], "resumable checkpoints keep the optimizer state"
    ck = load_checkpoint(out / "jepa-latest.pth.tar")
    assert ck.meta["source_format"] == "jepa-eval" and ck.meta["heads"] == 2 and ck.meta["img_size"] == 16
    assert ck.predictor is not None and ck.meta["has_predictor"]
    for module, key in ((ck.target_encoder, "target_encoder"), (ck.encoder, "encoder")):
        for k, v in module.state_dict().items():
            assert torch.equal(v, state[key][f"module.{k}"]), k
    # the target encoder moved away from the context encoder only through the EMA
    assert not torch.equal(state["encoder"]["module.blocks.0.attn.qkv.weight"],
                           state["target_encoder"]["module.blocks.0.attn.qkv.weight"])
    x = torch.randn(2, 3, 16, 16)
    assert ck.target_encoder(x).shape == (2, 16, 32)


def test_csv_log(full_run) -> None:
    out, _ = full_run
    with open(out / "train-log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == LOG_COLUMNS
    # monitors are on by default: a step-0 row holds their reference values and no training columns
    assert rows[0]["step"] == "0" and rows[0]["loss"] == "" and float(rows[0]["rankme"]) > 1
    rows = rows[1:]
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4
    assert all(math.isfinite(float(r["loss"])) and float(r["step_time"]) > 0 for r in rows)
    assert all(int(r["ctx_keep"]) >= 1 and int(r["tgt_keep"]) >= 1 for r in rows)
    lrs, moms = [float(r["lr"]) for r in rows], [float(r["momentum"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-4) and max(lrs) == pytest.approx(lrs[2])  # 2 warmup steps, then cosine
    assert moms == sorted(moms) and moms[0] == pytest.approx(0.996)


def test_resume_is_bit_exact(full_run, tmp_path) -> None:
    out_full, _ = full_run
    main(load_config("tiny-digits", **TINY), tmp_path, max_steps=5, progress=False)  # "killed" mid-epoch 2
    killed = _state(tmp_path / "jepa-latest.pth.tar")
    assert killed["jepa_eval"]["step"] == 5 and killed["epoch"] == 1
    summary = main(load_config("tiny-digits", **TINY), tmp_path, resume=True, progress=False)
    assert summary["step"] == 8
    a, b = _state(out_full / "jepa-latest.pth.tar"), _state(tmp_path / "jepa-latest.pth.tar")
    assert_same_training_state(a, b, "after resume")
    with open(out_full / "train-log.csv") as f1, open(tmp_path / "train-log.csv") as f2:
        assert [r["loss"] for r in csv.DictReader(f1)] == [r["loss"] for r in csv.DictReader(f2)]


def test_refuses_to_overwrite_or_resume_nothing(full_run, tmp_path) -> None:
    out, _ = full_run
    from jepa_eval.errors import UserError
    with pytest.raises(UserError, match="--resume"):
        main(load_config("tiny-digits", **TINY), out, progress=False)
    with pytest.raises(UserError, match="no jepa-latest"):
        main(load_config("tiny-digits", **TINY), tmp_path, resume=True, progress=False)


def test_a_release_copy_without_optimizer_moments_is_not_resumed(full_run, tmp_path) -> None:
    """The shipped demo checkpoint is stripped (strip_for_release): resuming it would restart Adam silently."""
    import shutil

    from jepa_eval.errors import UserError
    from pretrain.checkpointing import strip_for_release
    out, _ = full_run
    shutil.copy(out / "config.yaml", tmp_path / "config.yaml")
    strip_for_release(out / "jepa-latest.pth.tar", tmp_path / "jepa-latest.pth.tar")
    assert load_checkpoint(tmp_path / "jepa-latest.pth.tar").meta["has_predictor"]     # still loads for evaluation
    with pytest.raises(UserError, match="no optimizer moments"):
        main(load_config("tiny-digits", **TINY), tmp_path, resume=True, progress=False)


def test_cli_errors_exit_2(tmp_path, capsys) -> None:
    assert cli(["pretrain", "--config", "tiny-digit", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown pretraining config 'tiny-digit'" in err and "tiny-digits" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimization:\n  lrr: 0.1\n")
    assert cli(["pretrain", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "unknown config key 'optimization.lrr'" in capsys.readouterr().err


def test_cli_trains_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny-digits", "--out", str(out), "--epochs", "1"]
    assert cli(args + ["--max-steps", "2"]) == 0
    assert _state(out / "jepa-latest.pth.tar")["jepa_eval"]["step"] == 2
    assert cli(args + ["--max-steps", "3", "--resume"]) == 0
    assert "3/44 steps" in capsys.readouterr().out


def test_shipped_configs_resolve() -> None:
    names = available_configs()
    for name in ("in1k-vith14-ep300", "in1k-vith16-448-ep300", "in22k-vith14-ep66", "in22k-vitg16-ep44",
                 "tiny-digits", "tiny-fashion-mnist"):
        assert name in names
    released = {n: load_config(n) for n in names if n.startswith("in")}
    assert released["in1k-vith14-ep300"].data.batch_size == 128
    assert released["in1k-vith14-ep300"].optimization.warmup == 40
    assert released["in22k-vitg16-ep44"].model.width == 1408 and released["in22k-vitg16-ep44"].model.pred_depth == 16
    assert released["in1k-vith16-448-ep300"].data.img_size == 448


def test_schedules_and_weight_decay_groups() -> None:
    cfg = load_config("tiny-digits")
    o = cfg.optimization
    lr0, wd0, m0 = schedules(cfg, 0, 100, 10)
    lr_peak, _, _ = schedules(cfg, 10, 100, 10)
    lr_end, wd_end, m_end = schedules(cfg, 100, 100, 10)
    assert (lr0, wd0, m0) == (pytest.approx(o.start_lr), pytest.approx(o.weight_decay), pytest.approx(0.996))
    assert lr_peak == pytest.approx(o.lr) and lr_end == pytest.approx(o.final_lr)
    assert wd_end == pytest.approx(o.final_weight_decay) and m_end == pytest.approx(1.0)
    enc, pred, _ = build_models(cfg)
    opt = build_optimizer(enc, pred)
    no_wd = {id(p) for p in opt.param_groups[1]["params"]}
    for name, p in list(enc.named_parameters()) + list(pred.named_parameters()):
        if p.requires_grad:
            assert (id(p) in no_wd) == (name.endswith(".bias") or p.ndim == 1), name
    assert all(id(p) not in no_wd for p in opt.param_groups[0]["params"])


def test_masks_command_draws_png(tmp_path) -> None:
    out = tmp_path / "masks.png"
    assert cli(["masks", "--config", "tiny-digits", "--out", str(out), "--n", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000


def test_missing_dataset_plugin_is_a_clear_error(tmp_path, capsys) -> None:
    from jepa_eval.datasets import DATASETS
    if "clevr-count" in DATASETS:  # the CLEVR plug-in is installed: check the same path with a fake name
        cfg = tmp_path / "x.yaml"
        cfg.write_text("data:\n  dataset: no-such-set\nmodel:\n  name: vit_tiny\n  patch_size: 16\n")
        args, name = ["--config", str(cfg)], "no-such-set"
    else:
        args, name = ["--config", "tiny-clevr"], "clevr-count"
    assert cli(["pretrain", *args, "--out", str(tmp_path / "o")]) == 2
    assert f"dataset '{name}'" in capsys.readouterr().err


def test_restores_torch_thread_count_on_return_and_on_error(tmp_path) -> None:
    """tiny-digits pins one CPU thread (meta.cpu_threads); the caller's count comes back either way."""
    from jepa_eval.errors import UserError
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(UserError, match="no jepa-latest"):
            main(load_config("tiny-digits", **TINY), tmp_path / "none", resume=True, progress=False)
        assert torch.get_num_threads() == 2
        main(load_config("tiny-digits", **TINY), tmp_path / "run", max_steps=1, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
