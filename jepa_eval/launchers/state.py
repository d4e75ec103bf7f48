"""The submission record (``OUT/submission.json``) and job states read back from the scheduler.

Every ``jepa-eval run --launcher local|slurm`` appends the jobs it submitted (job id, unit key,
label, kind, submitit folder). ``job_table`` re-attaches from any process: records on disk say a
probe is done; otherwise SLURM jobs are asked through submitit's ``SlurmJob`` (``sacct``), local
jobs through their result pickle and process id."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..results import now, read_record

SUBMISSION = "submission.json"
PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
ACTIVE = ("pending", "running")


def load_submission(out: Path) -> dict[str, Any]:
    path = Path(out) / SUBMISSION
    if not path.exists():
        return {"version": 1, "submissions": []}
    return json.loads(path.read_text())


def append_submission(out: Path, launcher: str, folder: Path, snapshot: Path, options: dict[str, Any],
                      jobs: list[dict[str, Any]]) -> None:
    """Add one submission (written atomically, so a crash never leaves half a file)."""
    data = load_submission(out)
    data["submissions"].append({"submitted": now(), "launcher": launcher, "folder": str(folder),
                                "snapshot": str(snapshot), "options": options, "jobs": jobs})
    path = Path(out) / SUBMISSION
    atomic_write_json(path, data, indent=1)


def latest_jobs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The last submitted job of every unit, in submission order."""
    found: dict[str, dict[str, Any]] = {}
    for sub in data["submissions"]:
        for job in sub["jobs"]:
            found.pop(job["key"], None)
            found[job["key"]] = {**job, "launcher": sub["launcher"], "folder": sub["folder"]}
    return list(found.values())


def _result(folder: str, job_id: str) -> tuple[str, Any] | None:
    from submitit.core.utils import JobPaths
    path = JobPaths(folder, job_id, 0).result_pickle
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ModuleNotFoundError):
        return None


def log_tail(folder: str, job_id: str, lines: int = 8) -> str:
    """The last lines of a job's stderr (tracebacks and this suite's log lines go there)."""
    from submitit.core.utils import JobPaths
    try:
        text = JobPaths(folder, job_id, 0).stderr.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def _slurm_states(jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Scheduler state of each SLURM job id, from one ``sacct`` call (via submitit's watcher)."""
    from submitit.slurm.slurm import SlurmJob
    ids = [j["job_id"] for j in jobs if j["launcher"] == "slurm"]
    if not ids:
        return {}
    watcher = SlurmJob.watcher
    for j in jobs:
        if j["launcher"] == "slurm":
            SlurmJob(j["folder"], j["job_id"])  # registers the id with the shared watcher
    watcher.clear()  # finished states are cached, but a requeue can revive a job: ask afresh
    watcher.update()  # logs and carries on when sacct fails
    states = {i: watcher.get_state(i, mode="cache").split()[0] for i in ids}
    unknown = sorted({i.split("_")[0] for i, st in states.items() if st == "UNKNOWN"})
    if unknown:  # accounting lags a few seconds behind sbatch; slurmctld already knows the job
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(unknown)],
                                 capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            job_id, _, st = line.partition("|")
            if states.get(job_id) == "UNKNOWN" and st:
                states[job_id] = st.strip()
    return states


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def job_table(out: Path, tail: int = 8) -> list[dict[str, Any]]:
    """One row per unit: key, label, kind, job_id, state (pending/running/done/failed/unknown),
    scheduler (the raw scheduler state) and, for failures, the tail of the job's log."""
    jobs = latest_jobs(load_submission(out))
    sched = _slurm_states(jobs)
    rows = []
    for j in jobs:
        raw = sched.get(j["job_id"], "") if j["launcher"] == "slurm" else ""
        result = _result(j["folder"], j["job_id"])
        if j["kind"] == "probe" and j.get("record") and read_record(Path(j["record"])) is not None:
            state = "done"
        elif raw in PENDING:
            state = "pending"
        elif raw in RUNNING:
            state = "running"
        elif raw == "COMPLETED" or (result is not None and result[0] == "success"):
            state = "done"
        elif raw and raw != "UNKNOWN" or (result is not None and result[0] == "error"):
            state = "failed"
        elif j["launcher"] == "local":
            state = "running" if _pid_alive(j["job_id"]) else "failed"
        else:
            state = "unknown"
        if j["launcher"] == "local" and not raw:
            raw = {"done": "FINISHED", "failed": "FAILED", "running": "RUNNING"}.get(state, "")
        rows.append({"key": j["key"], "label": j["label"], "kind": j["kind"], "job_id": j["job_id"],
                     "state": state, "scheduler": raw or "UNKNOWN", "record": j.get("record"),
                     "log": log_tail(j["folder"], j["job_id"], tail) if state == "failed" else ""})
    return rows


def wait(out: Path, poll_s: float = 5.0, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Block until no job of ``out`` is pending or running; returns the final table."""
    t0 = time.time()
    while True:
        rows = job_table(out)
        if not any(r["state"] in ACTIVE for r in rows):
            return rows
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"jobs of {out} still active after {timeout_s:.0f} s")
        time.sleep(poll_s)
