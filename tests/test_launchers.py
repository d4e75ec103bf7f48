"""Launchers without a cluster: work units, option checks, submitit's LocalExecutor, status."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from submitit.helpers import DelayedSubmission

from _jobs import KNN_A, KNN_B, SPEC, metrics_by_entry, write_battery
from jepa_eval.checkpoint import load_checkpoint
from jepa_eval.cli import main
from jepa_eval.launchers.state import job_table, load_submission
from jepa_eval.launchers.units import UnitRunner, plan_units
from jepa_eval.runner import plan, run_in_process


def test_features_are_planned_once_per_split_and_finished_work_is_left_out(tmp_path):
    battery = write_battery(tmp_path / "b.yaml", KNN_A, KNN_B)
    out, cache = tmp_path / "out", tmp_path / "cache"
    jobs = plan([SPEC], str(battery), out, cache)
    cks = {SPEC: load_checkpoint(SPEC)}
    features, probes = plan_units(jobs, cks, out)
    # two entries read the same train and test splits: one features unit per split, not per entry
    assert sorted(u.label.split()[-3] for u in features) == ["digits:test", "digits:train"]
    assert len(probes) == 2 and all(sorted(p.after) == sorted(u.key for u in features) for p in probes)
    for unit in features:
        result = UnitRunner(unit)()
        assert all(Path(e).is_dir() for e in result["entries"]) and unit.finished()
    features2, probes2 = plan_units(jobs, cks, out)
    assert features2 == [] and [p.key for p in probes2] == [p.key for p in probes]
    assert all(p.after == [] for p in probes2)
    for unit in probes2:
        assert UnitRunner(unit)()["record"] == unit.record and unit.finished()
    assert plan_units(jobs, cks, out) == ([], [])
    # --force plans every probe again, but not the features
    f3, p3 = plan_units(jobs, cks, out, force=True)
    assert f3 == [] and len(p3) == 2 and not any(p.finished() for p in p3)


def test_units_are_checkpointable_by_resubmitting_themselves(tmp_path):
    jobs = plan([SPEC], str(write_battery(tmp_path / "b.yaml", KNN_A)), tmp_path / "out", tmp_path / "c")
    _, probes = plan_units(jobs, {SPEC: load_checkpoint(SPEC)}, tmp_path / "out")
    runner = UnitRunner(probes[0])
    again = runner.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is runner and again.args == ()


@pytest.mark.parametrize("argv, message", [
    (["--launcher", "slurm", "--partition", "debug"], "needs --gpus-per-task, --cpus-per-task, --timeout-min"),
    (["--launcher", "local"], "needs --timeout-min"),
    (["--launcher", "local", "--timeout-min", "5", "--partition", "p"], "--partition does not apply"),
    (["--timeout-min", "5"], "--timeout-min only applies to --launcher local or slurm"),
    (["--launcher", "slurm", "--partition", "p", "--gpus-per-task", "0", "--cpus-per-task", "0",
      "--timeout-min", "5"], "argument --cpus-per-task: expected a positive integer, got '0'"),
    (["--launcher", "nope"], "unknown launcher 'nope'"),
])
def test_resources_are_explicit(tmp_path, capsys, argv, message):
    try:
        code = main(["run", "--checkpoint", SPEC, "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:  # numbers are refused at parse time, by argparse types
        code = e.code
    assert code == 2 and message in capsys.readouterr().err


def test_status_needs_a_submission(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "no submission.json" in capsys.readouterr().err


@pytest.mark.slow  # three job processes, each importing torch
def test_local_launcher_matches_in_process_and_resubmits_nothing(tmp_path, monkeypatch, capsys):
    battery = write_battery(tmp_path / "b.yaml", KNN_A)
    ref = tmp_path / "ref"
    run_in_process(plan([SPEC], str(battery), ref, tmp_path / "ref-cache"), progress=False)
    # as if submitted from inside a SLURM job: the jobs must not inherit it
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    out = tmp_path / "out"
    argv = ["run", "--checkpoint", SPEC, "--battery", str(battery), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--launcher", "local", "--timeout-min", "10", "--no-progress"]
    assert main(argv) == 0
    assert "knn-a (top1_k5)" in capsys.readouterr().out  # the launcher waited: the table is there
    assert metrics_by_entry(out) == metrics_by_entry(ref)

    rows = job_table(out)
    assert sorted(r["kind"] for r in rows) == ["features", "features", "probe"]
    assert all(r["state"] == "done" for r in rows), rows
    folder = Path(load_submission(out)["submissions"][0]["folder"])
    snapshot = Path(load_submission(out)["submissions"][0]["snapshot"])
    for r in rows:
        with open(folder / f"{r['job_id']}_0_result.pkl", "rb") as f:
            outcome, result = pickle.load(f)
        assert outcome == "success" and result["slurm_job_id"] is None
        assert result["code"] == str(snapshot / "jepa_eval")  # ran the frozen copy, not the checkout

    assert main(["status", str(out)]) == 0
    assert "3 done" in capsys.readouterr().out
    assert main(argv) == 0  # everything exists: nothing is submitted again
    assert "nothing to submit: every record exists" in capsys.readouterr().err
    assert len(load_submission(out)["submissions"]) == 2  # features, then probes; no third


@pytest.mark.slow
def test_pretrain_job_runs_every_rank_and_resumes_from_latest(tmp_path, monkeypatch):
    from jepa_eval.launchers import LAUNCHERS, LaunchOptions, PretrainRequest
    from jepa_eval.launchers.pretrain_job import LATEST, PretrainJob
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "fake_train.py").write_text(
        "import json, os, pathlib\n"
        "def main(config, out, resume=False, progress=True, epochs=1):\n"
        "    rank = os.environ['RANK']\n"
        "    pathlib.Path(out, f'rank{rank}.json').write_text(json.dumps(\n"
        "        dict(world=os.environ['WORLD_SIZE'], resume=resume, config=config, epochs=epochs)))\n"
        "    return rank\n")
    monkeypatch.setenv("PYTHONPATH", f"{mod}:{Path(__file__).resolve().parents[1]}")
    out = tmp_path / "run"
    request = PretrainRequest("cfg.yaml", out, overrides={"epochs": 3}, gpus_per_node=0, tasks_per_node=2,
                              entry="fake_train:main")
    LAUNCHERS.get("local")().pretrain(request, LaunchOptions(timeout_min=5)).job.wait()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"world": "2", "resume": False, "config": "cfg.yaml", "epochs": 3}] * 2
    assert [r["state"] for r in job_table(out)] == ["done"]

    (out / LATEST).write_bytes(b"x")  # what a requeued job finds: training resumes from it
    again = PretrainJob("cfg.yaml", str(out), {"epochs": 3}, "fake_train:main").checkpoint()
    assert again.function.main_kwargs()["resume"] is True

