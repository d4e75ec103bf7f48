"""The default launcher: everything in this process, one job after the other."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runner import Job, run_in_process
from . import LaunchOptions, Launcher, PretrainOutcome, PretrainRequest, import_entry, register_launcher

RESOURCES = ("partition", "gpus_per_task", "cpus_per_task", "timeout_min", "array_parallelism", "mem_gb")


@register_launcher("inprocess")
class InProcessLauncher(Launcher):
    """Runs every job here, one after the other (the default; no resource options). Pretraining runs here
    too, on this process's devices (``torchrun`` starts one such process per GPU)."""

    @staticmethod
    def _no_resources(options: LaunchOptions) -> None:
        given = [k for k in RESOURCES if getattr(options, k) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} only applies to --launcher local or slurm")

    def launch(self, jobs: list[Job], out: Path, options: LaunchOptions, force: bool = False,
               progress: bool = True) -> bool:
        self._no_resources(options)
        run_in_process(jobs, force=force, progress=progress)
        return True

    def pretrain(self, request: PretrainRequest, options: LaunchOptions) -> PretrainOutcome:
        self._no_resources(options)
        if request.nodes != 1:
            raise UserError("--nodes applies to --launcher slurm; in process, start one process per GPU with torchrun")
        summary = import_entry(request.entry)(config=request.config, out=str(request.out), resume=request.resume,
                                              **request.overrides)
        return PretrainOutcome(summary=summary)
