"""Submitting pretraining: one SLURM job of ``nodes x gpus_per_node`` tasks running DDP.

Every task runs ``PretrainJob``, which exports the torch.distributed variables from SLURM's and
calls the training entry point. On preemption or timeout submitit calls ``checkpoint()`` (on rank
0), which resubmits the same job: training resumes from ``OUT/jepa-latest.pth.tar``, which the
trainer writes every epoch."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, TorchDistributedEnvironment, clean_env

from ..errors import UserError
from .state import append_submission
from .units import job_setup, snapshot_code

LATEST = "jepa-latest.pth.tar"


class PretrainJob(Checkpointable):
    """Calls ``entry(config=..., out=..., resume=bool, progress=False, **overrides)`` in every task;
    ``entry`` is ``"module:function"`` (default ``pretrain.train:main``, which resumes from
    ``OUT/jepa-latest.pth.tar`` when ``resume`` is true)."""

    def __init__(self, config: str, out: str, overrides: dict[str, Any] | None = None,
                 entry: str = "pretrain.train:main") -> None:
        self.config, self.out, self.overrides, self.entry = str(config), str(out), dict(overrides or {}), entry

    def main_kwargs(self) -> dict[str, Any]:
        """What the entry point gets: the checkpoint to resume from is looked up at start, so a
        requeued job picks up the latest one the previous run wrote."""
        return {"config": self.config, "out": self.out, "resume": (Path(self.out) / LATEST).is_file(),
                "progress": False, **self.overrides}

    def __call__(self) -> Any:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # MASTER_ADDR, RANK, ...
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name or "main")(**self.main_kwargs())


def submit_pretrain(config: str, out: str | Path, *, launcher: str = "slurm", nodes: int = 1,
                    gpus_per_node: int = 1, tasks_per_node: int | None = None,
                    cpus_per_task: int | None = None, partition: str | None = None,
                    timeout_min: int | None = None, mem_gb: float | None = None,
                    overrides: dict[str, Any] | None = None, entry: str = "pretrain.train:main") -> submitit.Job:
    """Submit DDP pretraining (one task per GPU unless ``tasks_per_node`` says otherwise) and record
    it in ``OUT/submission.json`` so ``jepa-eval status OUT`` follows it. ``launcher='local'`` runs
    the same tasks on this machine (``nodes`` must be 1)."""
    if timeout_min is None:
        raise UserError("pretraining needs --timeout-min (SLURM's default limit is 5 minutes)")
    if launcher == "slurm" and (partition is None or cpus_per_task is None):
        raise UserError("--launcher slurm needs --partition and --cpus-per-task")
    out = Path(out).resolve()
    folder = out / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    snapshot = snapshot_code(folder)
    setup = job_setup(snapshot)
    tasks = tasks_per_node or max(1, gpus_per_node)
    if launcher == "slurm":
        ex: submitit.Executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params: dict[str, Any] = dict(job_name="jepa-pretrain", partition=partition, time=timeout_min,
                                      nodes=nodes, ntasks_per_node=tasks, cpus_per_task=cpus_per_task,
                                      setup=setup)
        if gpus_per_node:
            params["gpus_per_node"] = gpus_per_node
        if mem_gb:
            params["mem"] = f"{int(mem_gb * 1024)}MB"
        ex.update_parameters(**params)
    elif launcher == "local":
        if nodes != 1:
            raise UserError("--launcher local runs on this machine: --nodes must be 1")
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
        ex.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks, gpus_per_node=gpus_per_node,
                             setup=setup)
    else:
        raise UserError(f"pretraining launcher must be local or slurm, not '{launcher}'")
    with clean_env():
        job = ex.submit(PretrainJob(config, str(out), overrides, entry))
    options = dict(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, partition=partition,
                   timeout_min=timeout_min, mem_gb=mem_gb)
    append_submission(out, launcher, folder, snapshot, options,
                      [{"key": "pretrain", "label": f"pretrain {Path(config).name} -> {out.name}",
                        "kind": "pretrain", "job_id": job.job_id, "record": None, "after": []}])
    return job
