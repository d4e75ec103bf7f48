"""Launchers decide where work runs: in this process, as submitit jobs on this machine (``local``) or on a
SLURM cluster (``slurm``). Each is a plug-in module registering a ``Launcher`` subclass, and owns all of its
kind of work: a battery's evaluation jobs (``launch``), a pretraining run (``pretrain``) and, for the ones
that submit, the states of the jobs it submitted (``job_states``, read by ``jepa-eval status``). The
commands (``run``, ``watch``, ``pretrain``, ``status``) look launchers up by name and never branch on one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError
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


@dataclass
class PretrainRequest:
    """One pretraining run. ``config`` is what ``entry`` accepts: pretrain's validated ``Config`` (an object
    with ``to_dict()``; a launcher that submits writes it to ``OUT/submitted-config.yaml`` for the job to
    read) or a YAML path. ``overrides`` (e.g. ``epochs``, ``max_steps``) are passed to ``entry`` as keywords.
    ``entry`` is ``"module:function"``, imported where the run happens."""
    config: Any
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False        # in process; a submitted job resumes whenever OUT/jepa-latest.pth.tar exists
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None   # default: one task per GPU (at least one)
    entry: str = "pretrain.train:main"


@dataclass
class PretrainOutcome:
    """What a launcher reports: the training summary when it ran here, or the id of the submitted job."""
    summary: dict[str, Any] | None = None
    job_id: str | None = None
    job: Any = None      # the submitted job's submitit handle (``wait()``, ``result()``) in this process


@dataclass
class JobState:
    """A submitted job as its launcher sees it now."""
    state: str           # pending, running, done, failed or unknown
    scheduler: str       # the launcher's own word for it (SLURM's state; FINISHED/FAILED/RUNNING for local)
    log: str = ""        # a failed job's log tail


class Launcher:
    """Where work runs. ``launch`` runs (or submits) a battery's ``jobs`` writing records under ``out`` and
    returns True when every job has finished by the time it returns (so the caller may print the results
    table). ``pretrain`` trains (or submits) one run. ``job_states`` answers for jobs this launcher submitted
    (rows of ``OUT/submission.json``)."""
    name: ClassVar[str] = ""

    def launch(self, jobs: list["Job"], out: Path, options: LaunchOptions, force: bool = False,
               progress: bool = True) -> bool:
        raise NotImplementedError

    def pretrain(self, request: PretrainRequest, options: LaunchOptions) -> PretrainOutcome:
        raise UserError(f"--launcher {self.name} cannot run pretraining")

    @classmethod
    def job_states(cls, jobs: list[dict[str, Any]], tail: int = 8) -> dict[str, JobState]:
        """{job id: state} for ``jobs`` (their ``job_id``, ``folder``, ``kind``, ... as submitted)."""
        return {j["job_id"]: JobState("unknown", "UNKNOWN") for j in jobs}


def register_launcher(name: str):
    def decorator(cls: type[Launcher]) -> type[Launcher]:
        cls.name = name
        return LAUNCHERS.register(name)(cls)
    return decorator


def import_entry(entry: str) -> Any:
    """The function named by ``"module:function"`` (``function`` defaults to ``main``)."""
    import importlib
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name or "main")
