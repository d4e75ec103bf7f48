"""Issue 19: where a correct answer exists it is given (a val split missing a class, a 1e-3 rate, a dataset
fallback), records say what ran, and a full disk ends with one line instead of SIGBUS or a traceback."""
from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _reliability import SPEC, assert_clean_failure, cli_inprocess, knn_entry, records, write_battery
from test_reliability_corpus import TINY_PRETRAIN, colour_battery, run_args


def only_record(out: Path) -> dict:
    (path,) = records(out)
    return json.loads(path.read_text())


def test_val_missing_a_class_keeps_its_labels(tmp_path, capsys):
    # train has ant, bee, cicada; val lacks bee. Per-split class indices made val's cicada label 1 (bee's),
    # and raw-pixel 1-NN scored 0 % on images it separates perfectly
    argv = colour_battery(tmp_path, ("ant", "bee", "cicada"), ("ant", "cicada"))
    code, _, err = cli_inprocess(capsys, argv)
    assert code == 0, err
    rec = only_record(tmp_path / "out")
    assert rec["metrics"]["top1_k1"] == 100.0
    assert rec["details"]["n_test"] == 6
    # the record identifies the class index: label i means the same class in every record sharing it
    from jepa_eval.results import classes_hash
    assert rec["classes"] == {"n": 3, "sha256": classes_hash(["ant", "bee", "cicada"])}


def test_same_classes_different_order_is_a_different_hash():
    from jepa_eval.results import classes_hash
    assert classes_hash(["ant", "bee"]) != classes_hash(["bee", "ant"])


def test_fallback_is_printed_and_recorded(tmp_path, capsys):
    # imagefolder without a root cannot open, so the entry falls back to digits: said on stderr and recorded
    battery = write_battery(tmp_path / "b.yaml", knn_entry("[imagefolder, digits]"))
    code, _, err = cli_inprocess(capsys, run_args(tmp_path, SPEC, battery))
    assert code == 0, err
    assert "note" in err and "used 'digits' because imagefolder:" in err
    rec = only_record(tmp_path / "out")
    assert rec["dataset"] == "digits"
    assert rec["dataset_fallback"].startswith("used 'digits' because imagefolder: dataset 'imagefolder' needs")


def test_records_store_thread_counts(tmp_path, capsys):
    import torch
    code, _, err = cli_inprocess(capsys, run_args(tmp_path, SPEC))
    assert code == 0, err
    threads = only_record(tmp_path / "out")["threads"]
    assert threads["torch"] == torch.get_num_threads() and "faiss" in threads


def test_pretrain_config_with_1e_minus_3_trains(tmp_path, capsys):
    # YAML 1.1 reads `1e-3` (no dot) as a string; the shared loader reads it as a float and training runs
    text = TINY_PRETRAIN.replace("  lr: 1.0e-3", "  lr: 1e-3").replace("  num_workers: 0", "  num_workers: 0\n  max_samples: 64")
    (tmp_path / "pre.yaml").write_text(text)
    code, out, err = cli_inprocess(capsys, ["pretrain", "--config", tmp_path / "pre.yaml", "--out", tmp_path / "run",
                                            "--max-steps", "1"])
    assert code == 0, err
    assert (tmp_path / "run" / "jepa-latest.pth.tar").exists()
    from pretrain.config import load_config
    assert load_config(str(tmp_path / "pre.yaml")).optimization.lr == 1e-3


@dataclass
class Section:
    rate: float = 0.1
    steps: int = 1
    scale: tuple[float, float] = (0.1, 1.0)
    flag: bool = False

    def validate(self) -> str | None:
        return None if self.rate > 0 else "rate must be positive"


@dataclass
class Top:
    inner: Section = field(default_factory=Section)


def test_typed_loader_rules():
    from jepa_eval.config_io import from_dict, load_yaml_text
    from jepa_eval.errors import UserError

    got = from_dict(Top, load_yaml_text("inner: {rate: 1e-3, steps: 3, scale: [0, 1]}", "t"), "t.yaml")
    assert got.inner.rate == 1e-3 and got.inner.scale == (0.0, 1.0) and isinstance(got.inner.scale[0], float)
    assert from_dict(Top, {"inner": None}, "t.yaml").inner == Section()
    for bad, message in [({"inner": {"steps": True}}, "key 'inner.steps' must be an integer, got True"),
                         ({"inner": {"flag": 1}}, "key 'inner.flag' must be true or false, got 1"),
                         ({"inner": {"scale": [1]}}, "must be a list of 2 numbers"),
                         ({"inner": {"rate": -1}}, "t.yaml: inner: rate must be positive"),
                         ({"inner": {"stesp": 1}}, "unknown key 'inner.stesp' \\(did you mean 'steps'\\?\\)"),
                         ({"outer": 1}, "t.yaml: unknown key 'outer'")]:
        with pytest.raises(UserError, match=message):
            from_dict(Top, bad, "t.yaml")


# ---------------------------------------------------------------- a full disk
def test_feature_cache_disk_full_is_one_line_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    """ENOSPC while the cache file is allocated (monkeypatched, so no real disk needs filling)."""
    import jepa_eval.features as features
    real = os.posix_fallocate

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(features.os, "posix_fallocate", full)
    argv = run_args(tmp_path, SPEC)
    code, _, err = cli_inprocess(capsys, argv)
    line = assert_clean_failure(code, err, tmp_path / "out", r"could not write the feature cache entry .*features\.npy: "
                                r"No space left on device \(.* free there\); no feature entry was published")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    monkeypatch.setattr(features.os, "posix_fallocate", real)
    code, _, err = cli_inprocess(capsys, argv)   # space freed: the rerun finishes
    assert code == 0, err and line
    assert len(records(tmp_path / "out")) == 1


def _mount_tiny_tmpfs(folder: Path) -> bool:
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    except FileNotFoundError:
        return False
    return done.returncode == 0


def test_feature_cache_on_a_really_full_disk(tmp_path):
    """A real 256 kB tmpfs as the cache: the process used to die of SIGBUS (exit 135) without a message."""
    from _reliability import cli_subprocess
    cache = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(cache):
        pytest.skip("mounting a tmpfs needs root (the monkeypatched ENOSPC test covers the logic)")
    try:
        battery = write_battery(tmp_path / "b.yaml", knn_entry(train=1000, test=300))
        argv = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", tmp_path / "out", "--cache", cache,
                "--no-progress"]
        proc = cli_subprocess(argv)
        assert_clean_failure(proc.returncode, proc.stderr, tmp_path / "out",
                             r"could not write .*: No space left on device \([\d.]+ (B|kB) free there\)")
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_record_write_permission_denied_names_the_path(tmp_path, capsys, monkeypatch):
    import jepa_eval.runner as runner

    def denied(path, record):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(runner, "write_record", denied)
    code, _, err = cli_inprocess(capsys, run_args(tmp_path, SPEC))
    assert_clean_failure(code, err, tmp_path / "out", r"could not write the record .*\.json: Permission denied "
                         r"\(.* free there\); nothing was recorded")


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch
    from jepa_eval.atomic import atomic_torch_save
    from jepa_eval.errors import UserError
    path = tmp_path / "jepa-latest.pth.tar"
    atomic_torch_save({"epoch": 1}, path)
    real_save = torch.save

    def half_then_full(obj, f):  # what torch's zip writer does on a full disk: a partial file, then an error
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(UserError, match=r"could not write .*jepa-latest\.pth\.tar: write failed .*free there\); "
                                        r"the previous file is kept"):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["jepa-latest.pth.tar"]   # no temporary file left
