"""Lazy, memory-mapped checkpoint loading: only the asked-for part is read, the optimizer state never;
the remembered sha256; a run holds one checkpoint's weights at a time; the safetensors export."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ijepa_reference as ref
from jepa_eval import UserError, load_checkpoint
from jepa_eval import hashindex

HEADS = 4


def _with_adam(sds: dict) -> dict:
    """The official layout plus AdamW state for the context encoder and predictor, as released files have."""
    params = [t for k in ("encoder", "predictor") for t in sds[k].values()]
    state = {i: {"step": torch.tensor(300.0), "exp_avg": torch.randn_like(t), "exp_avg_sq": torch.rand_like(t)}
             for i, t in enumerate(params)}
    return {"state": state, "param_groups": [{"lr": 1e-3, "params": list(range(len(params)))}]}


def save_with_opt(path: Path, sds: dict) -> None:
    ref.save_official(path, sds)
    obj = torch.load(path, weights_only=True)
    obj["opt"] = _with_adam(sds)
    torch.save(obj, path)


@pytest.fixture()
def official(tmp_path):
    sds = ref.official_state_dicts(heads=HEADS)
    path = tmp_path / "IN1K-vit.tiny.4-7e.pth.tar"
    save_with_opt(path, sds)
    return path, sds


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_parts_are_built_only_when_asked_and_match_the_official_forward(official, tmp_path):
    path, sds = official
    ck = load_checkpoint(path, num_heads=HEADS, cache=tmp_path / "cache")
    assert ck.materialized == ()  # validated, nothing read
    assert ck.meta["has_predictor"] and ck.meta["has_context_encoder"]
    with torch.no_grad():
        out = ck.target_encoder(_x())
        assert ck.materialized == ("target_encoder",)
        assert (out - ref.encoder_forward(sds["target_encoder"], _x(), HEADS)).abs().max() <= 1e-5
        assert (ck.encoder(_x()) - ref.encoder_forward(sds["encoder"], _x(), HEADS)).abs().max() <= 1e-5
    assert ck.materialized == ("target_encoder", "encoder")
    assert ck.predictor is not None and ck.materialized == ("target_encoder", "encoder", "predictor")
    # built weights are ordinary tensors, not the file's mapping, and keep the module's dtype/grad flags
    w = ck.target_encoder.blocks[0].attn.qkv.weight
    assert w.dtype == torch.float32 and w.requires_grad and not ck.target_encoder.pos_embed.requires_grad
    ck.release()
    assert ck.materialized == ()
    with torch.no_grad():  # built again from the same file after a release
        assert torch.equal(ck.target_encoder(_x()), out)


def test_strict_validation_happens_at_load_time_for_every_part(tmp_path):
    sds = ref.official_state_dicts(heads=HEADS)
    sds["predictor"]["predictor_proj.bias"] = torch.zeros(5)
    path = tmp_path / "ck.pth.tar"
    save_with_opt(path, sds)
    with pytest.raises(UserError, match=r"shape mismatches: predictor_proj\.bias"):
        load_checkpoint(path, num_heads=HEADS, cache=tmp_path)


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import jepa_eval.checkpoint, jepa_eval.lazyload, jepa_eval.hashindex, jepa_eval.features
    torch.ones(8).sum()

    def peak():  # VmHWM: this process image's peak (ru_maxrss would start from the forking parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    path, cache = sys.argv[1:3]
    steps = [peak()]
    ck = jepa_eval.checkpoint.load_checkpoint(path, cache=cache)
    steps.append(peak())
    ck.target_encoder
    steps.append(peak())
    ck.encoder
    steps.append(peak())
    obj = torch.load(path, weights_only=True)  # what loading used to cost: the whole file in memory
    steps.append(peak())
    print(json.dumps([b - a for a, b in zip(steps, steps[1:])]))
""")


@pytest.mark.timeout(300)
def test_loading_one_encoder_reads_neither_the_optimizer_nor_the_other_parts(tmp_path):
    """Peak resident memory of a fresh process, step by step: validating costs almost nothing, the
    target encoder about its own bytes, the context encoder as much again; the optimizer state and the
    predictor are never read. An eager load of the same file (the control) pays the whole file."""
    sds = ref.official_state_dicts(width=384, depth=8, heads=6, patch=16, img=64, pred_width=96, pred_depth=1)
    path = tmp_path / "mid.pth.tar"
    save_with_opt(path, sds)
    enc_bytes = sum(t.numel() * 4 for t in sds["target_encoder"].values())
    size = path.stat().st_size
    assert size > 4 * enc_bytes
    load_checkpoint(path, cache=tmp_path)  # hash remembered: the subprocess measures loading alone
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr
    validate, target, context, eager = json.loads(run.stdout.strip().splitlines()[-1])
    assert eager > 0.9 * size, (validate, target, context, eager)  # the measurement sees a whole-file load
    assert validate < 16 * 2**20, validate  # pickle, meta-device skeletons: megabytes whatever the file
    assert target < 1.3 * enc_bytes, (target, enc_bytes)
    assert 0.8 * enc_bytes < context < 1.3 * enc_bytes, (context, enc_bytes)


def test_legacy_files_load_whole_with_a_note(tmp_path, caplog):
    sds = ref.official_state_dicts(heads=HEADS)
    path = tmp_path / "old.pth.tar"
    obj = {k: {f"module.{n}": t for n, t in sd.items()} for k, sd in sds.items()}
    torch.save({**obj, "epoch": 3}, path, _use_new_zipfile_serialization=False)
    ck = load_checkpoint(path, num_heads=HEADS, cache=tmp_path)
    assert "legacy" in caplog.text          # a warning: shown on stderr by the CLI and by Python's default
    with torch.no_grad():
        assert (ck.target_encoder(_x()) - ref.encoder_forward(sds["target_encoder"], _x(), HEADS)).abs().max() <= 1e-5


def test_a_file_replaced_after_loading_is_still_read_as_validated(official, tmp_path):
    """A training run replaces jepa-latest atomically: the loaded checkpoint keeps reading the inode it
    hashed. A file rewritten in place is refused instead of silently read."""
    path, sds = official
    ck = load_checkpoint(path, num_heads=HEADS, cache=tmp_path)
    other = tmp_path / "other.pth.tar"
    save_with_opt(other, ref.official_state_dicts(heads=HEADS, seed=5))
    os.replace(other, path)
    with torch.no_grad():
        assert (ck.target_encoder(_x()) - ref.encoder_forward(sds["target_encoder"], _x(), HEADS)).abs().max() <= 1e-5
    ck2 = load_checkpoint(path, num_heads=HEADS, cache=tmp_path)
    assert ck2.meta["sha256"] != ck.meta["sha256"]
    with open(path, "r+b") as f:  # in place: same inode, new mtime
        f.seek(-1, os.SEEK_END)
        f.write(f.read(0) or b"\0")
    os.utime(path, ns=(1, 1))
    with pytest.raises(UserError, match="changed on disk"):
        ck2.target_encoder


def test_hash_is_remembered_until_the_file_changes(official, tmp_path, monkeypatch):
    path, _ = official
    calls = []
    real = hashindex.sha256_fd
    monkeypatch.setattr(hashindex, "sha256_fd", lambda fd: calls.append(fd) or real(fd))
    cache = tmp_path / "cache"
    truth = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_checkpoint(path, num_heads=HEADS, cache=cache).meta["sha256"] == truth
    assert load_checkpoint(path, num_heads=HEADS, cache=cache).meta["sha256"] == truth
    assert len(calls) == 1
    index = json.loads((cache / hashindex.INDEX_NAME).read_text())
    assert index[os.path.realpath(path)]["sha256"] == truth
    os.utime(path)  # touch: new mtime, hashed again
    load_checkpoint(path, num_heads=HEADS, cache=cache)
    assert len(calls) == 2
    # rewritten with other content of the same size (new inode): the new hash, not the remembered one
    new = path.with_suffix(".new")
    save_with_opt(new, ref.official_state_dicts(heads=HEADS, seed=9))
    assert new.stat().st_size == path.stat().st_size
    os.replace(new, path)
    assert load_checkpoint(path, num_heads=HEADS, cache=cache).meta["sha256"] == hashlib.sha256(
        path.read_bytes()).hexdigest() != truth
    assert len(calls) == 3
    # a damaged index costs a re-hash, never a wrong hash or an error
    (cache / hashindex.INDEX_NAME).write_text("{not json")
    assert load_checkpoint(path, num_heads=HEADS, cache=cache).meta["sha256"] != truth
    assert len(calls) == 4


def test_a_run_holds_one_checkpoints_weights_at_a_time(tmp_path, monkeypatch):
    from jepa_eval import runner
    specs = []
    for seed in (1, 2):
        path = tmp_path / f"run{seed}" / "jepa-latest.pth.tar"
        path.parent.mkdir()
        save_with_opt(path, ref.official_state_dicts(width=192, depth=1, heads=3, pred_width=48, pred_depth=1,
                                                     seed=seed))
        specs.append(str(path))
    battery = tmp_path / "tiny.yaml"
    battery.write_text("description: tiny\ntasks:\n  - {task: knn, id: knn, dataset: digits, pooling: lastPOOL,\n"
                       "     max_samples: {train: 40, test: 20}, params: {ks: [5], temperature: 0.07}}\n")
    seen: dict[str, object] = {}
    held = []
    real = runner.run_job

    def spy(job, ck, **kw):
        seen[job.spec] = ck
        held.append(sorted(s for s, c in seen.items() if c.materialized and s != job.spec))
        out = real(job, ck, **kw)
        assert "target_encoder" in ck.materialized  # the job really used this checkpoint's weights
        return out

    monkeypatch.setattr(runner, "run_job", spy)
    jobs = runner.plan(specs, str(battery), tmp_path / "out", tmp_path / "cache")
    done = runner.run_in_process(jobs, progress=False)
    assert len(done) == 2 and held == [[], []]  # the second checkpoint's job ran after the first was released
    records = [json.loads(Path(p).read_text()) for p in done]
    assert records[0]["checkpoint"]["sha256"] != records[1]["checkpoint"]["sha256"]
