"""submitit launchers: ``slurm`` (job arrays with dependencies) and ``local`` (the same jobs as
processes on this machine, through submitit's LocalExecutor).

Per checkpoint, features are extracted first (one array task per encoder and dataset split), then
that checkpoint's probes run as a second array that starts after them (``afterany``: a probe whose
features job failed still runs and reports the real error instead of pending forever). Every
submission is appended to ``OUT/submission.json``; a rerun submits only units whose work is
missing and whose last job is not pending or running."""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import submitit
from submitit.helpers import clean_env

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..runner import Job
from . import LaunchOptions, Launcher, register_launcher
from .state import ACTIVE, append_submission, job_table, wait
from ..log import get_logger
from .units import UnitRunner, WorkUnit, freeze_battery, job_setup, plan_units, snapshot_code

log = get_logger(__name__)

JOBS_FOLDER = "jobs"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class SubmititLauncher(Launcher):
    required: ClassVar[tuple[str, ...]] = ("timeout_min",)
    unsupported: ClassVar[tuple[str, ...]] = ()

    def check(self, options: LaunchOptions) -> None:
        missing = [_flag(k) for k in self.required if getattr(options, k) is None]
        if missing:  # resources are never guessed: SLURM's default time limit is 5 minutes
            raise UserError(f"--launcher {self.name} needs {', '.join(missing)}")
        extra = [_flag(k) for k in self.unsupported if getattr(options, k) is not None]
        if extra:
            raise UserError(f"{extra[0]} does not apply to --launcher {self.name}")
        for k in ("gpus_per_task", "cpus_per_task", "timeout_min", "array_parallelism"):
            v = getattr(options, k)
            if v is not None and (v < 0 or (v == 0 and k != "gpus_per_task")):
                raise UserError(f"{_flag(k)} must be {'>= 0' if k == 'gpus_per_task' else 'positive'}, got {v}")

    def executor(self, folder: Path, options: LaunchOptions, snapshot: Path, name: str,
                 after: list[str]) -> submitit.Executor:
        raise NotImplementedError

    def launch(self, jobs: list[Job], out: Path, options: LaunchOptions, force: bool = False,
               progress: bool = True) -> bool:
        self.check(options)
        out = Path(out).resolve()
        folder = out / JOBS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [freeze_battery(replace(j, out=str(out), cache=str(Path(j.cache).expanduser().resolve())), folder)
                for j in jobs]
        checkpoints = {}  # validated (no weights read: planning needs only their metadata)
        for j in jobs:
            if j.spec not in checkpoints:
                checkpoints[j.spec] = load_checkpoint(j.spec, cache=j.cache)
        features, probes = plan_units(jobs, checkpoints, out, force)
        active = {r["key"]: r["job_id"] for r in job_table(out) if r["state"] in ACTIVE}
        todo_f = [u for u in features if u.key not in active]
        todo_p = [u for u in probes if u.key not in active]
        busy = len(features) + len(probes) - len(todo_f) - len(todo_p)
        if not todo_f and not todo_p:
            log.info(f"nothing to submit: {busy} job(s) still pending/running" if busy else
                     "nothing to submit: every record exists")
            return self.finish(out, options) if busy else True
        snapshot = snapshot_code(folder)
        with clean_env():  # a submission from inside a job must not inherit its SLURM_*/SUBMITIT_* vars
            submitted = self.submit(todo_f, todo_p, active, folder, options, snapshot, out)
        n_f = sum(1 for s in submitted if s["kind"] == "features")
        log.info(f"submitted {n_f} features job(s) and {len(submitted) - n_f} probe job(s) "
                 f"({busy} already pending/running); logs in {folder}")
        return self.finish(out, options)

    def submit(self, features: list[WorkUnit], probes: list[WorkUnit], active: dict[str, str], folder: Path,
               options: LaunchOptions, snapshot: Path, out: Path) -> list[dict[str, Any]]:
        raise NotImplementedError

    def finish(self, out: Path, options: LaunchOptions) -> bool:
        return True

    # -- helpers ------------------------------------------------------------------------------------
    def _array(self, units: list[WorkUnit], folder: Path, options: LaunchOptions, snapshot: Path, name: str,
               after: list[str]) -> tuple[list[dict[str, Any]], list[submitit.Job]]:
        ex = self.executor(folder, options, snapshot, name, after)
        handles = ex.submit_array([UnitRunner(u) for u in units])
        return [{"key": u.key, "label": u.label, "kind": u.kind, "job_id": h.job_id, "record": u.record,
                 "after": after} for u, h in zip(units, handles)], handles


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
