"""What the submitit launchers share: ``slurm`` (``slurm.py``: job arrays with dependencies) and ``local``
(``local.py``: the same jobs as processes on this machine, through submitit's LocalExecutor). Each builds
its own executors, for a battery's units and for pretraining, and reads back the states of the jobs it
submitted; this base plans the units, submits pretraining and reads submitit's result pickles and logs.

Per checkpoint, features are extracted first (one array task per encoder and dataset split), then
that checkpoint's probes run as a second array that starts after them (``afterany``: a probe whose
features job failed still runs and reports the real error instead of pending forever). Every
submission is appended to ``OUT/submission.json``; a rerun submits only units whose work is
missing and whose last job is not pending or running."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import submitit
from submitit.helpers import clean_env

from ..atomic import atomic_write_text
from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..log import get_logger
from ..runner import Job
from . import JobState, LaunchOptions, Launcher, PretrainOutcome, PretrainRequest
from .pretrain_job import PretrainJob
from .state import ACTIVE, append_submission, job_table
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

    # -- pretraining --------------------------------------------------------------------------------
    def check_pretrain(self, request: PretrainRequest, options: LaunchOptions) -> None:
        if options.timeout_min is None:
            raise UserError("pretraining needs --timeout-min (SLURM's default limit is 5 minutes)")

    def pretrain_executor(self, folder: Path, request: PretrainRequest, options: LaunchOptions,
                          setup: list[str]) -> submitit.Executor:
        raise NotImplementedError

    def pretrain(self, request: PretrainRequest, options: LaunchOptions) -> PretrainOutcome:
        """One job of ``nodes x tasks`` processes running DDP, recorded in ``OUT/submission.json``."""
        self.check_pretrain(request, options)
        out = Path(request.out).resolve()
        folder = out / JOBS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        config = request.config
        if hasattr(config, "to_dict"):  # the job reads exactly what was validated here
            import yaml
            path = out / "submitted-config.yaml"
            atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
            config = path
        snapshot = snapshot_code(folder)
        ex = self.pretrain_executor(folder, request, options, job_setup(snapshot))
        with clean_env():
            job = ex.submit(PretrainJob(str(config), str(out), request.overrides, request.entry))
        used = dict(nodes=request.nodes, gpus_per_node=request.gpus_per_node, cpus_per_task=options.cpus_per_task,
                    partition=options.partition, timeout_min=options.timeout_min, mem_gb=options.mem_gb)
        append_submission(out, self.name, folder, snapshot, used,
                          [{"key": "pretrain", "label": f"pretrain {Path(config).name} -> {out.name}",
                            "kind": "pretrain", "job_id": job.job_id, "record": None, "after": []}])
        return PretrainOutcome(job_id=job.job_id, job=job)

    @staticmethod
    def tasks_per_node(request: PretrainRequest) -> int:
        return request.tasks_per_node or max(1, request.gpus_per_node)

    # -- job states -----------------------------------------------------------------------------------
    @classmethod
    def job_states(cls, jobs: list[dict[str, Any]], tail: int = 8) -> dict[str, JobState]:
        raw = cls.scheduler_states(jobs)
        states = {}
        for j in jobs:
            result = _result(j["folder"], j["job_id"])
            outcome = result[0] if result is not None else None
            st = cls.classify(j, raw.get(j["job_id"], ""), outcome)
            if st.state == "failed":
                st.log = log_tail(j["folder"], j["job_id"], tail)
            states[j["job_id"]] = st
        return states

    @classmethod
    def scheduler_states(cls, jobs: list[dict[str, Any]]) -> dict[str, str]:
        """{job id: the scheduler's raw state}, where there is a scheduler to ask."""
        return {}

    @classmethod
    def classify(cls, job: dict[str, Any], raw: str, outcome: str | None) -> JobState:
        """The state of one job from its scheduler state and its result pickle (``success``/``error``)."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------
    def _array(self, units: list[WorkUnit], folder: Path, options: LaunchOptions, snapshot: Path, name: str,
               after: list[str]) -> tuple[list[dict[str, Any]], list[submitit.Job]]:
        ex = self.executor(folder, options, snapshot, name, after)
        handles = ex.submit_array([UnitRunner(u) for u in units])
        return [{"key": u.key, "label": u.label, "kind": u.kind, "job_id": h.job_id, "record": u.record,
                 "after": after} for u, h in zip(units, handles)], handles


# -- reading jobs back -------------------------------------------------------------------------------
def _result(folder: str, job_id: str) -> tuple[str, Any] | None:
    """submitit's result pickle of a finished job: ("success", value) or ("error", traceback)."""
    from submitit.core.utils import JobPaths
    path = JobPaths(folder, job_id, 0).result_pickle
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ModuleNotFoundError):
        return None


def log_tail(folder: str, job_id: str, lines: int = 8) -> str:
    """The last lines of a job's stderr (tracebacks and this suite's log lines go there)."""
    from submitit.core.utils import JobPaths
    try:
        text = JobPaths(folder, job_id, 0).stderr.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])
