"""jepa-eval watch --once on a folder of fake official-layout I-JEPA checkpoints."""
from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest
import torch

from jepa_eval.cli import main
from jepa_eval.models import JEPAPredictor, build_encoder


def official_checkpoint(path, epoch: int, seed: int) -> None:
    """The released file layout: DDP 'module.' prefixes, optimizer state and bookkeeping keys."""
    torch.manual_seed(seed)
    enc, target = build_encoder(192, 2, 8, 32), build_encoder(192, 2, 8, 32)
    pred = JEPAPredictor(16, embed_dim=192, predictor_embed_dim=96, depth=1, num_heads=3)
    ddp = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    torch.save({"encoder": ddp(enc), "predictor": ddp(pred), "target_encoder": ddp(target),
                "opt": {"state": {}, "param_groups": []}, "scaler": None, "epoch": epoch,
                "loss": 0.5 / epoch, "batch_size": 8, "world_size": 1, "lr": 1e-3}, path)


@pytest.fixture()
def battery(tmp_path):
    b = tmp_path / "b.yaml"
    b.write_text("tasks: [{task: knn, id: knn, dataset: digits, max_samples: {train: 300, test: 100},"
                 " params: {ks: [10]}}]")
    return b


def _args(run_dir, battery, out, cache):
    return ["watch", str(run_dir), "--battery", str(battery), "--out", str(out), "--cache", str(cache),
            "--once", "--settle", "0.2", "--no-progress"]


def test_watch_once_evaluates_complete_checkpoints_and_resumes(tmp_path, battery, capsys):
    run_dir, out, cache = tmp_path / "run", tmp_path / "out", tmp_path / "cache"
    run_dir.mkdir()
    official_checkpoint(run_dir / "jepa-ep1.pth.tar", 1, seed=1)
    official_checkpoint(run_dir / "jepa-ep2.pth.tar", 2, seed=2)
    whole = tmp_path / "ep3.bin"
    official_checkpoint(whole, 3, seed=3)
    partial = run_dir / "jepa-ep3.pth.tar"   # a copy still in progress: half the bytes
    partial.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    old = time.time() - 60
    os.utime(partial, (old, old))            # looks settled: only loading can tell it is incomplete
    (run_dir / "notes.txt").write_text("not a checkpoint")

    assert main(_args(run_dir, battery, out, cache)) == 0
    err = capsys.readouterr().err
    assert "jepa-ep3.pth.tar cannot be loaded yet" in err and "report refreshed" in err
    recs = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert sorted(r["checkpoint"]["meta"]["epoch"] for r in recs) == [1, 2]
    assert {r["checkpoint"]["name"] for r in recs} == {"run/jepa-ep1", "run/jepa-ep2"}
    assert all(r["encoder"] == "target" and r["checkpoint"]["meta"]["source_format"] == "ijepa-official"
               for r in recs)
    assert (out / "report" / "report.html").is_file()
    assert (out / "report" / "figures" / "by_epoch.png").is_file()  # two epochs make a curve

    # the copy finishes; a restarted watcher evaluates only the new epoch
    whole.replace(partial)
    assert main(_args(run_dir, battery, out, cache)) == 0
    err = capsys.readouterr().err
    assert err.count("record exists") == 2 and err.count("run    ") == 1
    recs = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    assert sorted(r["checkpoint"]["meta"]["epoch"] for r in recs) == [1, 2, 3]
    csv = pd.read_csv(out / "report" / "results.csv")
    measured = csv[csv["source"] == "measured"]
    assert sorted(measured["epoch"]) == [1, 2, 3]
    assert "run/jepa-ep3 [target]" in (out / "report" / "report.md").read_text()


def test_watch_skips_a_file_being_written(tmp_path):
    from jepa_eval.commands.watch import settled
    f = tmp_path / "jepa-ep1.pth.tar"
    f.write_bytes(b"x" * 10)
    assert not settled(tmp_path / "absent.pth.tar", 0.0)
    assert settled(f, 0.05)   # unchanged during the wait
    import threading

    def grow():
        time.sleep(0.05)
        with open(f, "ab") as fh:
            fh.write(b"more")
    t = threading.Thread(target=grow)
    t.start()
    assert not settled(f, 0.3)  # grew while we waited
    t.join()


def test_watch_user_errors(tmp_path, battery, capsys):
    assert main(["watch", str(tmp_path / "nope"), "--battery", str(battery), "--out", str(tmp_path / "o"),
                 "--once"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["watch", str(tmp_path), "--battery", "no-such-battery", "--out", str(tmp_path / "o"),
                 "--once"]) == 2
    assert "unknown battery" in capsys.readouterr().err


def test_watch_resources_are_checked_before_any_checkpoint_is_read(tmp_path, battery, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    official_checkpoint(run_dir / "jepa-ep1.pth.tar", 1, seed=1)
    argv = _args(run_dir, battery, tmp_path / "out", tmp_path / "cache")
    assert main([*argv, "--launcher", "local"]) == 2        # submitting needs a time limit: never guessed
    assert "--launcher local needs --timeout-min" in capsys.readouterr().err
    assert main([*argv, "--timeout-min", "5"]) == 2         # in process there is nothing to limit
    assert "--timeout-min only applies to --launcher local or slurm" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records").exists()


@pytest.mark.slow  # job processes, each importing torch
def test_watch_goes_through_the_launcher(tmp_path, battery, capsys):
    """--launcher local: the new checkpoint's features and probe run as submitit jobs that `status` follows,
    with the same numbers as in process."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    official_checkpoint(run_dir / "jepa-ep1.pth.tar", 1, seed=1)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_args(run_dir, battery, ref, tmp_path / "ref-cache")) == 0
    capsys.readouterr()
    assert main([*_args(run_dir, battery, out, tmp_path / "cache"), "--launcher", "local", "--timeout-min", "10"]) == 0
    assert "report refreshed" in capsys.readouterr().err
    assert main(["status", str(out), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["kind"] for r in rows) == ["features", "features", "probe"]
    assert all(r["state"] == "done" for r in rows)

    def metrics(folder):
        return {r["entry"]: r["metrics"] for r in (json.loads(p.read_text()) for p in (folder / "records").rglob("*.json"))}
    assert metrics(out) == metrics(ref) and metrics(out)
    assert (out / "report" / "report.html").is_file()
