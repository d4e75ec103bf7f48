"""Crash and resume with a real ``kill -9``: during feature extraction, pretraining and report writing.

Each test starts the real CLI as a separate process, watches the files it writes, and kills it with
SIGKILL at a known point. To make that point certain (and never a race with the process finishing),
a FIFO is put where the process writes its next temporary file: its ``open`` waits there for a reader
until the kill. The FIFO is then replaced by a half-written file, which is what a kill in the middle of
a write leaves. The rerun must finish, equal an uninterrupted run, and leave no temporary file."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

import jepa_eval.features as features_mod
from _reliability import (SPEC, block_writes_to, cli_inprocess, cli_popen, kill9, knn_entry, record_metrics,
                          records, wait_for, write_battery)
from report_fixtures import make_record


def half_written(path: Path, text: bytes = b'{"done": 40') -> None:
    """Swap the FIFO for what a kill during the write leaves behind: a partial temporary file."""
    path.unlink()
    path.write_bytes(text)


def no_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- feature extraction
N_TRAIN, N_TEST, CHUNK = 2600, 50, 2048   # CHUNK: the feature cache's default chunk (two chunks here)


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.tobytes())


def digits_as_idx(root: Path) -> Path:
    """Digits tiled to N_TRAIN train images in Fashion-MNIST's idx layout: more than one cache chunk."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.resize(np.arange(len(images)), N_TRAIN + N_TEST)
    root.mkdir(parents=True)
    write_idx(root / "train-images-idx3-ubyte", images[idx[:N_TRAIN]])
    write_idx(root / "train-labels-idx1-ubyte", data.target[idx[:N_TRAIN]])
    write_idx(root / "t10k-images-idx3-ubyte", images[idx[N_TRAIN:]])
    write_idx(root / "t10k-labels-idx1-ubyte", data.target[idx[N_TRAIN:]])
    return root


def test_kill_during_feature_extraction_resumes_from_the_last_chunk(tmp_path, capsys, monkeypatch):
    data = digits_as_idx(tmp_path / "fm")
    battery = write_battery(tmp_path / "b.yaml", knn_entry("fashion-mnist", root=data, train=N_TRAIN, test=N_TEST))
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", out, "--cache", cache, "--no-progress"]
    proc = cli_popen(args, tmp_path / "killed.log", pause_after="jepa_eval.features:atomic_write_text")
    try:
        progress = wait_for(lambda: next(cache.glob("*.partial/progress.json"), None), proc,
                            what="the first chunk to be durable")
        partial = progress.parent
        wait_for(lambda: block_writes_to(partial / f".progress.json.{proc.pid}.tmp"), proc, what="the FIFO")
        assert partial.is_dir(), "the extraction finished before it could be killed"
    finally:
        kill9(proc)
    assert json.loads(progress.read_text()) == {"done": CHUNK}
    assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    assert not records(out)
    half_written(partial / f".progress.json.{proc.pid}.tmp")

    encoded = []
    real_pool = features_mod.pool_many  # one call per encoder pass, whatever the number of poolings
    monkeypatch.setattr(features_mod, "pool_many", lambda enc, x, ps: (encoded.append(len(x)), real_pool(enc, x, ps))[1])
    code, _, err = cli_inprocess(capsys, args)
    assert code == 0, err
    # train: the shape probe (1 image) and the second chunk only; test: everything, it had not started
    assert sum(encoded) == (1 + N_TRAIN - CHUNK) + (1 + N_TEST)
    entries = sorted(p for p in cache.iterdir() if p.is_dir())
    assert [sorted(f.name for f in e.iterdir()) for e in entries] == [["features.npy", "labels.npy", "meta.json"]] * 2
    assert not no_temp_files(tmp_path / "cache") and not no_temp_files(out)

    ref_args = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", tmp_path / "ref", "--cache",
                tmp_path / "ref-cache", "--no-progress"]
    code, _, err = cli_inprocess(capsys, ref_args)
    assert code == 0, err
    assert record_metrics(out) == record_metrics(tmp_path / "ref")
    for entry in entries:
        fresh = tmp_path / "ref-cache" / entry.name
        assert np.array_equal(np.load(entry / "features.npy"), np.load(fresh / "features.npy"))


# ---------------------------------------------------------------- pretraining
PRETRAIN_CONFIG = """# tiny-digits, shortened: 128 images / batch 32 = 4 steps per epoch, 4 epochs
data: {dataset: digits, img_size: 16, crop_scale: [0.3, 1.0], batch_size: 32, num_workers: 0, max_samples: 128}
mask: {enc_mask_scale: [0.85, 1.0], pred_mask_scale: [0.15, 0.25], aspect_ratio: [0.75, 1.5], nenc: 1, npred: 2,
       min_keep: 2, allow_overlap: false}
model: {name: tiny, patch_size: 4, width: 32, depth: 2, num_heads: 2, mlp_ratio: 2.0, pred_depth: 1, pred_emb_dim: 16}
optimization: {epochs: 4, warmup: 0.5, start_lr: 1.0e-4, lr: 1.0e-3, final_lr: 1.0e-6, weight_decay: 0.04,
               final_weight_decay: 0.4, ema: [0.996, 1.0]}
meta: {seed: 0, use_bfloat16: true, checkpoint_every: 1, cpu_threads: 1}
"""


def log_rows(run: Path) -> list[dict]:
    path = run / "train-log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_kill_during_pretraining_resumes_bit_exact(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(PRETRAIN_CONFIG)
    run, latest = tmp_path / "run", tmp_path / "run" / "jepa-latest.pth.tar"
    proc = cli_popen(["pretrain", "--config", config, "--out", run], tmp_path / "killed.log",
                     pause_after="pretrain.checkpointing:save_checkpoint")
    try:
        wait_for(latest.exists, proc, what="the first checkpoint")
        wait_for(lambda: block_writes_to(latest.with_name(f".{latest.name}.{proc.pid}.tmp")), proc, what="the FIFO")
        # the process now trains epoch 2 and stops inside the next checkpoint write: kill it there
        # training rows only: the monitors' step-0 row has no loss
        wait_for(lambda: len([r for r in log_rows(run) if r["loss"]]) >= 8, proc, what="step 8")
    finally:
        kill9(proc)
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert state["jepa_eval"]["step"] == 4 and state["epoch"] == 1  # the last whole checkpoint
    half_written(latest.with_name(f".{latest.name}.{proc.pid}.tmp"), b"PK\x03\x04 half a zip")

    code, out, err = cli_inprocess(capsys, ["pretrain", "--config", config, "--out", run, "--resume"])
    assert code == 0, err
    assert "16/16 steps" in out
    code, _, err = cli_inprocess(capsys, ["pretrain", "--config", config, "--out", tmp_path / "ref"])
    assert code == 0, err
    a = torch.load(latest, map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "ref" / "jepa-latest.pth.tar", map_location="cpu", weights_only=True)
    for key in ("encoder", "predictor", "target_encoder"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs from the uninterrupted run"
    for pid, s in b["opt"]["state"].items():
        assert torch.equal(a["opt"]["state"][pid]["exp_avg_sq"], s["exp_avg_sq"])
    assert a["jepa_eval"] == b["jepa_eval"] and a["epoch"] == b["epoch"] == 4
    rows, ref_rows = log_rows(run), log_rows(tmp_path / "ref")
    assert [int(r["step"]) for r in rows] == list(range(0, 17))  # step 0: the monitors' reference row
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert [r["rankme"] for r in rows] == [r["rankme"] for r in ref_rows]
    assert not no_temp_files(run)


# ---------------------------------------------------------------- report writing
def test_kill_during_report_writing_keeps_the_old_report_whole(tmp_path, capsys):
    results = tmp_path / "results"
    make_record(results, "run1/jepa-ep10", "knn", {"top1_k20": 40.0}, epoch=10)
    make_record(results, "run1/jepa-ep20", "knn", {"top1_k20": 45.0}, epoch=20)
    report = tmp_path / "report"
    assert cli_inprocess(capsys, ["report", "--results", results, "--out", report])[0] == 0
    old = {name: (report / name).read_bytes() for name in ("report.md", "report.html", "results.csv")}
    make_record(results, "run1/jepa-ep30", "knn", {"top1_k20": 47.5}, epoch=30)   # new results arrive

    bars = report / "figures" / "bars.png"
    before = bars.stat().st_mtime_ns
    proc = cli_popen(["report", "--results", results, "--out", report], tmp_path / "killed.log")
    try:
        # figures are written first, then results.csv: stop the process at the latter
        assert block_writes_to(report / f".results.csv.{proc.pid}.tmp")
        wait_for(lambda: bars.stat().st_mtime_ns != before, proc, what="the new figures")
    finally:
        kill9(proc)
    for name, content in old.items():  # each file is the old one, whole
        assert (report / name).read_bytes() == content, name
    half_written(report / f".results.csv.{proc.pid}.tmp", b"model,checkpoint,ent")

    code, _, err = cli_inprocess(capsys, ["report", "--results", results, "--out", report])
    assert code == 0, err
    assert cli_inprocess(capsys, ["report", "--results", results, "--out", tmp_path / "ref"])[0] == 0

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    got, want = files(report), files(tmp_path / "ref")
    assert got.keys() == want.keys()  # no temporary file left, nothing missing
    for name in got:
        if name in ("report.md", "report.html"):  # they say when they were generated
            when = re.compile(rb"generated \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
            assert len(when.findall(got[name])) == 1, name
            assert when.sub(b"", got[name]) == when.sub(b"", want[name]), name
        else:
            assert got[name] == want[name], name
    assert b"47.5" in got["results.csv"]


# ---------------------------------------------------------------- probe training
LINEAR = """task: linear
id: linear
dataset: digits
max_samples: {train: 300, test: 50}
pooling: lastPOOL
params: {lrs: [0.01, 0.1], wds: [0.0, 0.0005], norms: [none, bn], epochs: 6, batch_size: 32}"""


def test_kill_during_probe_training_resumes_from_the_last_epoch(tmp_path, capsys, monkeypatch):
    import jepa_eval.probes.linear as linear_mod
    battery = write_battery(tmp_path / "b.yaml", LINEAR)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", out, "--cache", cache, "--no-progress"]
    # an epoch on 300 rows takes milliseconds: without the pause a fast machine saves all six before the FIFO
    proc = cli_popen(args, tmp_path / "killed.log", pause_after="jepa_eval.probes.linear:save_state")
    try:
        state = wait_for(lambda: next(out.glob("records/*/*.work/linear-lastPOOL.pt"), None), proc,
                         what="the first probe epoch")
        wait_for(lambda: block_writes_to(state.with_name(f".{state.name}.{proc.pid}.tmp")), proc, what="the FIFO")
    finally:
        kill9(proc)
    done = torch.load(state, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < 6 and not records(out)
    half_written(state.with_name(f".{state.name}.{proc.pid}.tmp"), b"PK\x03\x04")

    saved = []
    real_save = linear_mod.save_state
    monkeypatch.setattr(linear_mod, "save_state", lambda path, st: (saved.append(st["epoch"]), real_save(path, st)))
    code, _, err = cli_inprocess(capsys, args)
    assert code == 0, err
    assert saved == list(range(done + 1, 7))   # it went on from the saved epoch
    assert not state.parent.exists()           # the scratch folder goes once the record is written

    code, _, err = cli_inprocess(capsys, ["run", "--checkpoint", SPEC, "--battery", battery, "--out",
                                          tmp_path / "ref", "--cache", cache, "--no-progress"])
    assert code == 0, err
    got, want = (json.loads(records(o)[0].read_text()) for o in (out, tmp_path / "ref"))
    assert got["metrics"] == want["metrics"] and got["chosen"] == want["chosen"]
    assert got["details"]["grid"] == want["details"]["grid"]
