"""Integration tests against a real SLURM cluster (``.ci/slurm-up.sh`` starts one on localhost).

Jobs run this checkout's code (a snapshot of it) with this interpreter; each takes seconds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _jobs import KNN_A, KNN_B, SPEC, broken_entry, metrics_by_entry, write_battery
from jepa_eval.cli import main
from jepa_eval.launchers.state import load_submission, wait
from jepa_eval.runner import plan, run_in_process

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("sinfo") is None,
                                 reason="no SLURM here (`sinfo` not on PATH); .ci/run starts a local cluster")]
ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ["--launcher", "slurm", "--partition", os.environ.get("JEPA_EVAL_TEST_PARTITION", "debug"),
             "--gpus-per-task", "0", "--cpus-per-task", "1", "--timeout-min", "10"]
WAIT_S = 600


def submit(battery: Path, out: Path, cache: Path) -> None:
    argv = ["run", "--checkpoint", SPEC, "--battery", str(battery), "--out", str(out), "--cache", str(cache),
            "--no-progress", *RESOURCES]
    assert main(argv) == 0


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The in-process results every SLURM run must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    battery = write_battery(tmp / "ok.yaml", KNN_A, KNN_B)
    run_in_process(plan([SPEC], str(battery), tmp / "out", tmp / "cache"), progress=False)
    return metrics_by_entry(tmp / "out")


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> dict:
    """One submission: two good k-NN entries and one whose image folder holds a damaged file."""
    tmp = tmp_path_factory.mktemp("mixed")
    battery = write_battery(tmp / "mixed.yaml", KNN_A, KNN_B, broken_entry(tmp / "images"))
    out = tmp / "out"
    t0 = time.time()
    submit(battery, out, tmp / "cache")
    rows = wait(out, poll_s=2, timeout_s=WAIT_S)
    return {"out": out, "battery": battery, "cache": tmp / "cache", "rows": rows, "seconds": time.time() - t0}


def test_array_matches_in_process(mixed_run, reference):
    out = mixed_run["out"]
    sub = load_submission(out)["submissions"][0]
    kinds = [j["kind"] for j in sub["jobs"]]
    # features once per dataset split (digits train, digits test, images train), then the probes
    assert kinds == ["features"] * 3 + ["probe"] * 3
    feature_ids = {j["job_id"] for j in sub["jobs"] if j["kind"] == "features"}
    assert all(set(j["after"]) == feature_ids for j in sub["jobs"][3:])  # probes start after features
    assert metrics_by_entry(out) == reference
    print(f"\n[slurm] mixed battery (3 features + 3 probe array tasks) finished in {mixed_run['seconds']:.0f} s")


def test_failed_task_is_reported_while_others_complete(mixed_run, capsys):
    rows = {r["label"].split()[-1]: r for r in mixed_run["rows"]}
    assert rows["knn-a"]["state"] == rows["knn-b"]["state"] == "done"
    broken = rows["knn-broken"]
    assert broken["state"] == "failed" and broken["scheduler"] == "FAILED"
    assert "corrupt or unreadable image" in broken["log"] and "1.png" in broken["log"]
    assert main(["status", str(mixed_run["out"])]) == 1  # a failure makes the exit status 1
    text = capsys.readouterr().out
    assert "failed" in text and "corrupt or unreadable image" in text


def test_status_reattaches_from_a_fresh_process_and_rerun_submits_only_missing(mixed_run):
    out = mixed_run["out"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "jepa_eval", "status", str(out), "--json"], cwd="/",
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    fresh = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["job_id"], r["state"]) for r in fresh] == [(r["job_id"], r["state"]) for r in mixed_run["rows"]]
    assert sum(r["state"] == "failed" for r in fresh) == 2  # the image folder's features and its probe
    # a rerun submits only the failed units; the finished ones are never resubmitted
    submit(mixed_run["battery"], out, mixed_run["cache"])
    second = load_submission(out)["submissions"][1]["jobs"]
    probe = next(j for j in second if j["kind"] == "probe")
    try:
        # the probe waits for its features job (seconds), so it is still pending: hold it there
        subprocess.run(["scontrol", "hold", probe["job_id"]], check=True)
        assert {j["key"] for j in second} == {r["key"] for r in fresh if r["state"] == "failed"}
        # a third run leaves the held (pending) probe alone
        submit(mixed_run["battery"], out, mixed_run["cache"])
        later = [j["key"] for sub in load_submission(out)["submissions"][2:] for j in sub["jobs"]]
        assert probe["key"] not in later
    finally:
        ids = [j["job_id"] for sub in load_submission(out)["submissions"][1:] for j in sub["jobs"]]
        subprocess.run(["scancel", *ids], check=False)


@pytest.mark.parametrize("how", ["scontrol-requeue", "preemption-signal"])
def test_requeued_job_resumes_without_redoing_work(tmp_path, reference, how):
    """``scontrol requeue`` kills and requeues the job; a preemption/timeout signal (USR2, what
    SLURM sends before the time limit) makes submitit call the unit's ``checkpoint()`` and requeue."""
    battery = write_battery(tmp_path / "a.yaml", KNN_A)
    out, cache = tmp_path / "out", tmp_path / "cache"
    t0 = time.time()
    submit(battery, out, cache)
    probe = next(j for j in load_submission(out)["submissions"][0]["jobs"] if j["kind"] == "probe")
    deadline = time.time() + WAIT_S
    log = Path(load_submission(out)["submissions"][0]["folder"]) / f"{probe['job_id']}_0_log.err"
    # requeue it once its Python is running the unit (seen in its log), not merely scheduled
    while not (log.exists() and "unit   probe" in log.read_text()):
        assert squeue_state(probe["job_id"]), "the probe job ended before it could be requeued"
        assert time.time() < deadline, "the probe job never started"
        time.sleep(0.1)
    # the probe runs only after its features: they are complete now; remember them exactly
    entries = sorted(p for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 2 and not list(cache.glob("*.partial"))
    before = {p.name: (p.stat().st_ino, (p / "features.npy").stat().st_mtime_ns) for p in entries}
    if how == "scontrol-requeue":
        subprocess.run(["scontrol", "requeue", probe["job_id"]], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", probe["job_id"]], check=True)
    # on an idle machine the first run may finish its record before SLURM's kill lands (submitit
    # bypasses SIGTERM), so "done" can be reported before the requeued run starts: wait for that run
    while log.read_text().count("unit   probe") < 2 or squeue_state(probe["job_id"]):
        assert time.time() < deadline, "the requeued probe job never ran again"
        time.sleep(0.5)
    rows = wait(out, poll_s=2, timeout_s=WAIT_S)
    assert all(r["state"] == "done" for r in rows), rows
    assert log.read_text().count("unit   probe") == 2  # it started again after the requeue...
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", probe["job_id"]],
                             capture_output=True, text=True).stdout.split()
    assert history[0] == "REQUEUED" and len(history) == 2, history  # one requeue, one final run
    if how == "preemption-signal":
        assert "Calling checkpoint method" in log.with_suffix(".out").read_text()
    after = {p.name: (p.stat().st_ino, (p / "features.npy").stat().st_mtime_ns)
             for p in cache.iterdir() if p.is_dir()}
    assert after == before  # ...and reused the features instead of extracting them again
    assert metrics_by_entry(out) == {"knn-a": reference["knn-a"]}
    print(f"\n[slurm] {how} test finished in {time.time() - t0:.0f} s")


def test_ijepa_paper_battery_runs_as_slurm_arrays(tmp_path, monkeypatch):
    """The shipped paper battery on the miniature ImageNet and CLEVR folders, through SLURM: every entry
    (frozen probes, the fine-tuned 1 % entry, k-NN) finishes and records its protocol and transform."""
    from test_paper_battery import SPEC as PAPER_SPEC, paper_data
    paper_data(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert main(["run", "--checkpoint", PAPER_SPEC, "--battery", "ijepa-paper", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--no-progress", *RESOURCES]) == 0
    rows = wait(out, poll_s=2, timeout_s=WAIT_S)
    assert rows and all(r["state"] == "done" for r in rows), [(r["label"], r["state"], r.get("log")) for r in rows]
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in (out / "records").rglob("*.json"))}
    assert set(records) == {"in1k-linear", "in1k-1pct", "in1k-1pct-finetune", "clevr-count", "clevr-dist",
                            "in1k-knn"}
    assert all(r["protocol"] for r in records.values())
    assert records["in1k-linear"]["eval_transform"] == "resize18-centercrop16-bicubic-imagenetnorm"
    assert records["clevr-count"]["splits"]["train"] == "trainval"


def test_pretraining_goes_through_the_slurm_launcher(tmp_path):
    """`jepa-eval pretrain --launcher slurm`: one DDP job (one CPU task here) trains the tiny config for two
    steps from the validated config the command wrote; `status` follows it to done."""
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny-digits", "--out", str(out), "--max-steps", "2",
                 "--launcher", "slurm", "--partition", os.environ.get("JEPA_EVAL_TEST_PARTITION", "debug"),
                 "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout-min", "10"]) == 0
    rows = wait(out, poll_s=2, timeout_s=WAIT_S)
    assert [(r["kind"], r["state"]) for r in rows] == [("pretrain", "done")], rows
    assert (out / "submitted-config.yaml").is_file() and (out / "jepa-latest.pth.tar").is_file()
    import torch
    state = torch.load(out / "jepa-latest.pth.tar", map_location="cpu", weights_only=True)
    assert state["jepa_eval"]["step"] == 2
