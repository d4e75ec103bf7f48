"""Two `jepa-eval run` processes on one output folder and one feature cache; the job lock's edge case."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from PIL import Image

from jepa_eval import load_checkpoint
from jepa_eval.results import load, read_record
from jepa_eval.runner import plan, resolve_job
from _reliability import SPEC, cli_inprocess, cli_popen, knn_entry, record_metrics, records, write_battery

ENTRIES = [knn_entry(entry_id=f"knn-k{k}", train=200, test=50).replace("ks: [5]", f"ks: [{k}]") for k in (1, 3, 5)]


def test_two_processes_on_one_output_folder(tmp_path, capsys):
    battery = write_battery(tmp_path / "b.yaml", *ENTRIES)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", out, "--cache", cache, "--no-progress"]
    procs = [cli_popen(args, tmp_path / f"p{i}.log") for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, (tmp_path / "p0.log").read_text() + (tmp_path / "p1.log").read_text()
    logs = [(tmp_path / f"p{i}.log").read_text() for i in range(2)]

    found = records(out)
    assert len(found) == len(ENTRIES)                              # none lost
    assert all(read_record(p) is not None for p in found)           # none corrupt
    assert len(load(out)) == len(ENTRIES)
    started = [ln for log in logs for ln in log.splitlines() if ln.startswith("run ")]
    assert sorted(ln.split()[-3] for ln in started) == sorted(f"knn-k{k}" for k in (1, 3, 5)), logs
    assert len({Path(e).name for e in cache.iterdir() if e.is_dir()}) == 2   # one train and one test entry
    assert not list(out.rglob("*.lock")) and not list(out.rglob("*.tmp"))

    # the numbers equal a single process's
    code, _, err = cli_inprocess(capsys, [*args[:-5], "--out", tmp_path / "one", "--cache", tmp_path / "c1",
                                          "--no-progress"])
    assert code == 0, err
    assert record_metrics(out) == record_metrics(tmp_path / "one")


def test_a_claimed_job_stays_claimed_after_its_previous_owner_failed(tmp_path, capsys):
    """Process A fails on a job and releases its lock; process B had already opened the lock file and
    now takes the lock. A third process C must see the job as busy. (When A removed the lock file on
    release, C created a new one, locked that, and ran the job beside B.)"""
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(3):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), (80 * c + 20 * i, 40, 0)).save(root / split / cls / f"{i}.png")
    broken = root / "train" / "bee" / "9.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    entry = knn_entry("imagefolder", root=root, splits="{train: train, test: val}", train=100, test=100)
    battery = write_battery(tmp_path / "b.yaml", entry)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--checkpoint", SPEC, "--battery", battery, "--out", out, "--cache", cache, "--no-progress"]

    job = plan([SPEC], str(battery), out, cache)[0]
    lock_path = resolve_job(job, load_checkpoint(SPEC))[3].with_suffix(".lock")
    lock_path.parent.mkdir(parents=True)
    b_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)                  # B opens the lock file ...
    try:
        code, _, err = cli_inprocess(capsys, args)                     # ... A runs the job and fails
        assert code == 2 and "corrupt or unreadable image" in err
        fcntl.flock(b_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)               # B now holds the lock
        broken.unlink()                                                # (the data is fixed meanwhile)
        code, _, err = cli_inprocess(capsys, args)                     # C
        assert code == 0 and "busy" in err and not records(out), err
    finally:
        os.close(b_fd)                                                 # B gives up
    code, _, err = cli_inprocess(capsys, args)
    assert code == 0 and len(records(out)) == 1 and not lock_path.exists(), err
