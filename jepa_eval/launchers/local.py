"""The ``local`` launcher: the same jobs as the ``slurm`` one, as processes on this machine (submitit's
LocalExecutor, named explicitly: AutoExecutor would pick SLURM whenever ``srun`` is on PATH)."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import submitit

from ..errors import UserError
from . import JobState, LaunchOptions, PretrainRequest, register_launcher
from .state import append_submission
from .submit import SubmititLauncher
from .units import WorkUnit, job_setup

@register_launcher("local")
class LocalLauncher(SubmititLauncher):
    """Runs on this machine; there is no scheduler to hold dependencies, so it waits for the
    features jobs before submitting the probes, and returns when everything has finished."""
    unsupported = ("partition", "cpus_per_task", "mem_gb")

    def executor(self, folder: Path, options: LaunchOptions, snapshot: Path, name: str,
                 after: list[str]) -> submitit.Executor:
        # LocalExecutor by name: AutoExecutor would pick SLURM whenever srun is on PATH
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
        ex.update_parameters(timeout_min=options.timeout_min, gpus_per_node=options.gpus_per_task or 0,
                             setup=job_setup(snapshot))
        return ex

    def check_pretrain(self, request: PretrainRequest, options: LaunchOptions) -> None:
        super().check_pretrain(request, options)
        if request.nodes != 1:
            raise UserError("--launcher local runs on this machine: --nodes must be 1")

    def pretrain_executor(self, folder: Path, request: PretrainRequest, options: LaunchOptions,
                          setup: list[str]) -> submitit.Executor:
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
        ex.update_parameters(timeout_min=options.timeout_min, tasks_per_node=self.tasks_per_node(request),
                             gpus_per_node=request.gpus_per_node, setup=setup)
        return ex

    @classmethod
    def classify(cls, job: dict[str, Any], raw: str, outcome: str | None) -> JobState:
        if outcome == "success":
            state = "done"
        elif outcome == "error":
            state = "failed"
        else:  # no result yet: the job is running while its process (the job id) lives
            state = "running" if _pid_alive(job["job_id"]) else "failed"
        return JobState(state, {"done": "FINISHED", "failed": "FAILED", "running": "RUNNING"}[state])

    def submit(self, features: list[WorkUnit], probes: list[WorkUnit], active: dict[str, str], folder: Path,
               options: LaunchOptions, snapshot: Path, out: Path) -> list[dict[str, Any]]:
        submitted: list[dict[str, Any]] = []
        step = options.array_parallelism or max(1, len(features) + len(probes))
        for units in (features, probes):
            for i in range(0, len(units), step):
                batch, handles = self._array(units[i:i + step], folder, options, snapshot,
                                             "jepa-" + units[0].kind, [])
                append_submission(out, self.name, folder, snapshot, asdict(options), batch)
                submitted += batch
                for h in handles:  # our children: waiting on the handles also reaps them
                    h.wait()
        return submitted


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False
