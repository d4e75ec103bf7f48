"""Launchers decide where a battery's jobs run: in this process, as submitit jobs on this machine
(``local``) or as SLURM job arrays (``slurm``). Each is a plug-in module registering a ``Launcher``
subclass; ``jepa-eval run --launcher NAME`` looks it up by name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry

if TYPE_CHECKING:
    from ..runner import Job

LAUNCHERS: Registry[type["Launcher"]] = Registry("launcher", "jepa_eval.launchers")


@dataclass
class LaunchOptions:
    """Resources for submitted jobs; ``timeout_min`` is never defaulted (SLURM's default is 5 min)."""
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    timeout_min: int | None = None
    array_parallelism: int | None = None
    mem_gb: float | None = None
    wait: bool = False


class Launcher:
    """Runs (or submits) ``jobs`` writing records under ``out``; returns True when every job has
    finished by the time it returns (so the caller may print the results table)."""
    name: ClassVar[str] = ""

    def launch(self, jobs: list["Job"], out: Path, options: LaunchOptions, force: bool = False,
               progress: bool = True) -> bool:
        raise NotImplementedError


def register_launcher(name: str):
    def decorator(cls: type[Launcher]) -> type[Launcher]:
        cls.name = name
        return LAUNCHERS.register(name)(cls)
    return decorator
