"""The submission record (``OUT/submission.json``) and the table of job states read back from it.

Every submission by a launcher (``jepa-eval run|watch|pretrain --launcher local|slurm``) appends the
jobs it submitted (job id, unit key, label, kind, submitit folder). ``job_table`` re-attaches from any
process: records on disk say a probe is done; otherwise the launcher that submitted a job is asked
(``Launcher.job_states``: SLURM through ``sacct``, local jobs through their result pickle and process id)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..results import now, read_record

SUBMISSION = "submission.json"
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


def job_table(out: Path, tail: int = 8) -> list[dict[str, Any]]:
    """One row per unit: key, label, kind, job_id, state (pending/running/done/failed/unknown),
    scheduler (the launcher's raw state) and, for failures, the tail of the job's log. Each launcher
    answers for the jobs it submitted; a probe whose record exists is done whatever its job says."""
    from . import LAUNCHERS, JobState
    jobs = latest_jobs(load_submission(out))
    states: dict[tuple[str, str], JobState] = {}
    for name in dict.fromkeys(j["launcher"] for j in jobs):
        answered = LAUNCHERS.get(name).job_states([j for j in jobs if j["launcher"] == name], tail)
        states.update({(name, job_id): st for job_id, st in answered.items()})
    rows = []
    for j in jobs:
        st = states.get((j["launcher"], j["job_id"])) or JobState("unknown", "UNKNOWN")
        recorded = j["kind"] == "probe" and j.get("record") and read_record(Path(j["record"])) is not None
        state = "done" if recorded else st.state
        rows.append({"key": j["key"], "label": j["label"], "kind": j["kind"], "job_id": j["job_id"],
                     "state": state, "scheduler": st.scheduler or "UNKNOWN", "record": j.get("record"),
                     "log": st.log if state == "failed" else ""})
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
