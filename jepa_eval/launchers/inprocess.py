"""The default launcher: every job in this process, one after the other."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runner import Job, run_in_process
from . import LaunchOptions, Launcher, register_launcher


@register_launcher("inprocess")
class InProcessLauncher(Launcher):
    """Runs every job here, one after the other (the default; no resource options)."""
    def launch(self, jobs: list[Job], out: Path, options: LaunchOptions, force: bool = False,
               progress: bool = True) -> bool:
        given = [k for k in ("partition", "gpus_per_task", "cpus_per_task", "timeout_min", "array_parallelism", "mem_gb")
                 if getattr(options, k) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} only applies to --launcher local or slurm")
        run_in_process(jobs, force=force, progress=progress)
        return True
