"""The CLI end to end: a battery run writes records, reruns skip them, user mistakes exit 2 in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jepa_eval import results
from jepa_eval.cli import main

SPEC = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=2"
BATTERY = """description: tiny test battery
tasks:
  - task: knn
    dataset: digits
    max_samples: {train: 300, test: 120}
    params: {ks: [5, 20]}
"""


@pytest.fixture()
def battery(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(BATTERY)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_one_self_describing_record_and_reruns_skip_it(tmp_path, battery, capsys):
    out, cache = tmp_path / "res", tmp_path / "cache"
    args = ("run", "--checkpoint", SPEC, "--battery", battery, "--out", out, "--cache", cache, "--no-progress")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    records = list((out / "records").rglob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["task"] == "knn" and rec["dataset"] == "digits" and rec["encoder"] == "target"
    assert rec["checkpoint"]["sha256"] and rec["checkpoint"]["meta"]["source_format"] == "timm"
    assert rec["primary_metric"] == "top1_k20" and 10 < rec["metrics"]["top1_k20"] <= 100
    assert rec["details"]["n_train"] == 300 and rec["details"]["n_test"] == 120
    assert {"git_commit", "versions", "wall_time_s", "seed", "pooling"} <= set(rec)
    assert "top1_k20" in stdout
    mtime = records[0].stat().st_mtime_ns
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "record exists" in err and records[0].stat().st_mtime_ns == mtime
    code, _, err = run_cli(capsys, *args, "--force")
    assert code == 0 and records[0].stat().st_mtime_ns != mtime
    df = results.load(out)
    assert list(df.columns) == results.COLUMNS and len(df) == 2
    assert df.loc[df.primary, "value"].item() == rec["metrics"]["top1_k20"]


@pytest.mark.parametrize("make_args, expected", [
    (lambda d: ["--checkpoint", d / "absent.pth.tar"], "checkpoint not found"),
    (lambda d: ["--checkpoint", d / "notes.pth.tar"], "not a"),
    (lambda d: ["--checkpoint", SPEC, "--battery", "smok"], "did you mean 'smoke'"),
    (lambda d: ["--checkpoint", SPEC, "--battery", d / "badtask.yaml"], "unknown task 'knnn'"),
    (lambda d: ["--checkpoint", SPEC, "--battery", d / "badtype.yaml"], "task 'knn': parameter 'ks' must be"),
    (lambda d: ["--checkpoint", SPEC, "--battery", d / "badyaml.yaml"], "not valid YAML"),
    (lambda d: ["--checkpoint", "timm:vit_tiny_patch16_224,img_size=30,patch_size=4"], "not divisible"),
])
def test_user_mistakes_exit_2_with_one_line_and_no_record(tmp_path, capsys, make_args, expected):
    (tmp_path / "notes.pth.tar").write_text("not a checkpoint")
    (tmp_path / "badtask.yaml").write_text("tasks:\n  - task: knnn\n    dataset: digits\n")
    (tmp_path / "badtype.yaml").write_text("tasks:\n  - task: knn\n    dataset: digits\n    params: {ks: ten}\n")
    (tmp_path / "badyaml.yaml").write_text("tasks: [\n")
    out = tmp_path / "res"
    args = make_args(tmp_path)
    if "--battery" not in args:  # never fall back to a real battery if the error were missed
        (tmp_path / "ok.yaml").write_text(BATTERY)
        args += ["--battery", tmp_path / "ok.yaml"]
    code, _, err = run_cli(capsys, "run", *args, "--out", out, "--cache", tmp_path / "c",
                           "--no-progress")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("jepa-eval: error:"), err
    assert expected in err
    assert not list(out.rglob("*.json")) if out.exists() else True


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "run", "--checkpoint", SPEC, "--out", blocker / "sub", "--no-progress",
                           "--battery", "does-not-matter.yaml")
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jepa_eval", "run", "--checkpoint", str(tmp_path / "x.pth"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "checkpoint not found" in proc.stderr


def test_list_shows_tasks_and_batteries(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "knn" in out and "smoke" in out
