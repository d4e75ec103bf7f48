"""What a submitted pretraining task runs: ``PretrainJob``, one per DDP rank.

Each task exports the torch.distributed variables from SLURM's (or the local executor's) and calls the
training entry point. On preemption or timeout submitit calls ``checkpoint()`` (on rank 0), which
resubmits the same job: training resumes from ``OUT/jepa-latest.pth.tar``, which the trainer writes every
epoch. The executors that run it belong to the launchers (``submit.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from . import import_entry

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
        return import_entry(self.entry)(**self.main_kwargs())
