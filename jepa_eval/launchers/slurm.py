"""The ``slurm`` launcher: a battery as SLURM job arrays (features, then each checkpoint's probes after them,
``afterany``), pretraining as one DDP job of ``nodes x tasks``; job states from ``sacct`` (``squeue`` while
accounting lags behind)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import submitit

from ..errors import UserError
from ..log import get_logger
from . import JobState, LaunchOptions, PretrainRequest, register_launcher
from .state import append_submission, wait
from .submit import SubmititLauncher
from .units import WorkUnit, job_setup

log = get_logger(__name__)

SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}


@register_launcher("slurm")
class SlurmLauncher(SubmititLauncher):
    """Submits SLURM job arrays (features, then probes after them) and returns; ``--wait`` waits."""
    required = ("partition", "gpus_per_task", "cpus_per_task", "timeout_min")

    def check(self, options: LaunchOptions) -> None:
        super().check(options)
        if shutil.which("sbatch") is None:
            raise UserError("--launcher slurm needs SLURM's sbatch on PATH (run it on a cluster login node)")

    def executor(self, folder: Path, options: LaunchOptions, snapshot: Path, name: str,
                 after: list[str]) -> submitit.Executor:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params: dict[str, Any] = dict(job_name=name, partition=options.partition, time=options.timeout_min,
                                      cpus_per_task=options.cpus_per_task, setup=job_setup(snapshot))
        if options.gpus_per_task:
            params["gpus_per_task"] = options.gpus_per_task
        if options.array_parallelism:
            params["array_parallelism"] = options.array_parallelism
        if options.mem_gb:
            params["mem"] = f"{int(options.mem_gb * 1024)}MB"
        if after:
            params["dependency"] = "afterany:" + ":".join(after)
        ex.update_parameters(**params)
        return ex

    def check_pretrain(self, request: PretrainRequest, options: LaunchOptions) -> None:
        super().check_pretrain(request, options)
        if options.partition is None or options.cpus_per_task is None:
            raise UserError("--launcher slurm needs --partition and --cpus-per-task")

    def pretrain_executor(self, folder: Path, request: PretrainRequest, options: LaunchOptions,
                          setup: list[str]) -> submitit.Executor:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params: dict[str, Any] = dict(job_name="jepa-pretrain", partition=options.partition,
                                      time=options.timeout_min, nodes=request.nodes,
                                      ntasks_per_node=self.tasks_per_node(request),
                                      cpus_per_task=options.cpus_per_task, setup=setup)
        if request.gpus_per_node:
            params["gpus_per_node"] = request.gpus_per_node
        if options.mem_gb:
            params["mem"] = f"{int(options.mem_gb * 1024)}MB"
        ex.update_parameters(**params)
        return ex

    @classmethod
    def scheduler_states(cls, jobs: list[dict[str, Any]]) -> dict[str, str]:
        return _slurm_states([j["job_id"] for j in jobs], [j["folder"] for j in jobs])

    @classmethod
    def classify(cls, job: dict[str, Any], raw: str, outcome: str | None) -> JobState:
        if raw in SLURM_PENDING:
            state = "pending"
        elif raw in SLURM_RUNNING:
            state = "running"
        elif raw == "COMPLETED" or outcome == "success":
            state = "done"
        elif raw and raw != "UNKNOWN" or outcome == "error":
            state = "failed"
        else:
            state = "unknown"
        return JobState(state, raw or "UNKNOWN")

    def submit(self, features: list[WorkUnit], probes: list[WorkUnit], active: dict[str, str], folder: Path,
               options: LaunchOptions, snapshot: Path, out: Path) -> list[dict[str, Any]]:
        submitted = self._array(features, folder, options, snapshot, "jepa-features", [])[0] if features else []
        ids = {**active, **{s["key"]: s["job_id"] for s in submitted}}
        for spec in dict.fromkeys(u.spec for u in probes):  # one probe array per checkpoint
            units = [u for u in probes if u.spec == spec]
            after = sorted({ids[k] for u in units for k in u.after if k in ids})
            submitted += self._array(units, folder, options, snapshot, "jepa-probe", after)[0]
        append_submission(out, self.name, folder, snapshot, asdict(options), submitted)
        return submitted

    def finish(self, out: Path, options: LaunchOptions) -> bool:
        if not options.wait:
            log.info(f"follow with: jepa-eval status {out}")
            return False
        wait(out, poll_s=5.0)
        return True


def _slurm_states(ids: list[str], folders: list[str]) -> dict[str, str]:
    """Scheduler state of each SLURM job id, from one ``sacct`` call (via submitit's watcher)."""
    from submitit.slurm.slurm import SlurmJob
    if not ids:
        return {}
    watcher = SlurmJob.watcher
    for job_id, folder in zip(ids, folders):
        SlurmJob(folder, job_id)  # registers the id with the shared watcher
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
