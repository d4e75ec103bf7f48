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


class Stop(Exception):
    pass


def test_interrupted_run_resumes_bit_exactly(encoder, folder, tmp_path):
    """Killed after step 5 (state saved at step 4), rerun: same weights, optimizer and losses as one
    uninterrupted run - with RandAugment, erasing, drop-path and gradient accumulation all on."""
    train_ds, _ = data(folder)
    rows = np.arange(len(train_ds))
    cfg = FinetuneConfig(blrs=[0.1], epochs=3, warmup_epochs=1, batch_size=8, micro_batch=4, drop_path=0.2,
                         checkpoint_every=2)

    def run(workdir, stop_at=None):
        net = FinetuneNet(encoder, 3, drop_path=cfg.drop_path)
        net.load_state_dict(start)

        def on_step(step, loss):
            if step == stop_at:
                raise Stop

        return net, train(net, train_ds, rows, cfg, 0.1, 0, 28, CPU, workdir / "run0.pt", on_step=on_step)

    start = FinetuneNet(encoder, 3).state_dict()
    full, full_losses = run(tmp_path / "a")
    with pytest.raises(Stop):
        run(tmp_path / "b", stop_at=5)
    saved = torch.load(tmp_path / "b" / "run0.pt", weights_only=True)
    assert saved["step"] == 4 and len(saved["losses"]) == 4
    resumed, resumed_losses = run(tmp_path / "b")
    assert resumed_losses == full_losses and len(full_losses) == 9
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(full.state_dict()["vit.blocks.0.attn.qkv.weight"], start["vit.blocks.0.attn.qkv.weight"])
    # a different seed draws other batches and augmentations: the equality above is not vacuous
    other = FinetuneNet(encoder, 3, drop_path=cfg.drop_path)
    other.load_state_dict(start)
    other_losses = train(other, train_ds, rows, FinetuneConfig(**{**cfg.__dict__, "seed": 1}), 0.1, 0, 28, CPU)
    assert other_losses != full_losses


def test_several_lrs_are_selected_on_a_holdout_of_the_subset(encoder, folder, tmp_path, monkeypatch):
    train_ds, test_ds = data(folder)
    seen = []
    import jepa_eval.probes.finetune as ft
    real_evaluate = ft.evaluate

    def spy(net, ds, rows, device, batch=256, transform=None):
        seen.append((ds.identity["split"], len(rows)))
        return real_evaluate(net, ds, rows, device, batch, transform)

    monkeypatch.setattr(ft, "evaluate", spy)
    cfg = FinetuneConfig(blrs=[1e-6, 0.2], epochs=2, warmup_epochs=0, batch_size=8, rand_augment="", re_prob=0.0)
    res = finetune(encoder, train_ds, np.arange(len(train_ds)), test_ds, cfg, 3, 28, 0.25, tmp_path, CPU)
    assert seen == [("train", 6), ("train", 6), ("val", 12)]   # 2 of 8 per class held out; test once
    assert [g["blr"] for g in res.grid] == [1e-6, 0.2] and res.selected_on == "train-subset-holdout-25%"
    assert res.chosen["blr"] == 0.2 and res.chosen["lr"] == pytest.approx(0.2 * 8 / 256)
    assert res.grid[1]["holdout_top1"] > res.grid[0]["holdout_top1"]
    assert (tmp_path / "run1-holdout.pt").exists() and not (tmp_path / "run1.pt").exists()
    seen.clear()   # a rerun reuses the finished candidates and the final run's state: only the test pass
    again = finetune(encoder, train_ds, np.arange(len(train_ds)), test_ds, cfg, 3, 28, 0.25, tmp_path, CPU)
    assert seen == [("val", 12)] and again.top1 == res.top1 and again.losses == res.losses


@pytest.mark.parametrize("params", [{"blrs": []}, {"blrs": [0.0]}, {"layer_decay": 0.0}, {"layer_decay": 1.5},
                                    {"drop_path": 1.0}, {"label_smoothing": -0.1}, {"epochs": 0},
                                    {"warmup_epochs": 50.0}, {"batch_size": 0}, {"micro_batch": -1},
                                    {"head": "cls"}, {"rand_augment": "m9"}, {"re_prob": 2.0},
                                    {"k_per_class": 0}, {"holdout_fraction": 0.6}, {"blrs": 1e-3},
                                    {"lr": 1e-3}])
def test_bad_params_raise_user_error(params):
    with pytest.raises(UserError):
        build_params(TASKS.get("finetune"), params, "test")


def test_pixels_and_bad_pooling_are_refused_in_one_line(tmp_path, capsys):
    from jepa_eval.cli import main
    battery = tmp_path / "b.yaml"
    for spec, extra, message in [("pixels:8", "", "fine-tuning needs a ViT encoder"),
                                 (str(demo_checkpoint_path()), ", pooling: concatPOOL4", "trains its own head")]:
        battery.write_text("tasks:\n  - {task: finetune, dataset: digits, params: {epochs: 1, warmup_epochs: 0.0, "
                           f"k_per_class: 2}}{extra}}}\n")
        assert main(["run", "--checkpoint", spec, "--battery", str(battery), "--out", str(tmp_path / "o"),
                     "--cache", str(tmp_path / "c"), "--no-progress"]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "".join(err)
        assert not list((tmp_path / "o").rglob("*.json"))


def test_battery_run_extracts_no_features_and_records_the_protocol(folder, tmp_path):
    from jepa_eval import runner
    from jepa_eval.launchers.units import plan_units
    subset = tmp_path / "1percent.txt"
    subset.write_text("".join(f"n0{c}_{i}.png\n" for c in range(3) for i in range(4)))
    battery = tmp_path / "b.yaml"
    battery.write_text(f"""tasks:
  - task: finetune
    id: in1k-1pct-finetune
    dataset: imagefolder
    root: {folder}
    splits: {{train: train, test: val}}
    params: {{subset_file: {subset}, epochs: 2, warmup_epochs: 1.0, batch_size: 4, blrs: [0.1]}}
""")
    spec = str(demo_checkpoint_path())
    jobs = runner.plan([spec], str(battery), tmp_path / "out", tmp_path / "cache")
    features, probes = plan_units(jobs, {spec: load_checkpoint(spec)}, tmp_path / "out")
    assert features == [] and len(probes) == 1 and probes[0].after == []
    (path,) = runner.run_in_process(jobs, progress=False)
    rec = json.loads(path.read_text())
    assert rec["task"] == "finetune" and rec["primary_metric"] == "top1" and rec["encoder"] == "target"
    assert 0 <= rec["metrics"]["top1"] <= 100 and rec["pooling"] == "finetuned-mae"
    assert rec["chosen"]["blr"] == 0.1 and rec["chosen"]["layer_decay"] == 0.75
    assert rec["selected_on"].startswith("none")
    d = rec["details"]
    assert d["subset"] == "1percent.txt" and d["n_train"] == 12 and d["n_test"] == 12
    assert d["schedule"]["steps_per_epoch"] == 3 and d["schedule"]["total_steps"] == 6
    assert len(d["train_loss_per_epoch"]) == 2
    from jepa_eval.hashindex import INDEX_NAME   # the checkpoint's remembered sha256 is kept there: no features
    left = sorted(p.name for p in (tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []
    assert {name.removesuffix(".lock") for name in left} <= {INDEX_NAME}
    assert not path.with_suffix(".work").exists()    # the resumable state is removed with the record


def test_ijepa_paper_battery_has_the_finetuned_1pct_row():
    from jepa_eval.battery import load_battery
    from jepa_eval.runner import feature_needs
    entries = {e.id: e for e in load_battery("ijepa-paper").entries}
    ft = entries["in1k-1pct-finetune"]
    assert ft.task == "finetune" and feature_needs(ft) == []
    assert ft.params.batch_size == 512 and ft.params.epochs == 50 and ft.params.layer_decay == 0.75
    assert ft.params.label_smoothing == 0.1 and ft.raw_params["subset_file"] == "$IMAGENET_1PCT"
    assert entries["in1k-1pct"].task == "lowshot"   # the frozen protocol stays, as its own entry
