"""Work units: what one submitted array task does.

A battery run becomes two kinds of units. A ``features`` unit fills the shared feature cache once
per (checkpoint, encoder, dataset split); a ``probe`` unit runs one battery entry (one record) and
reads those features. Units carry only names and paths: all progress lives on disk (feature cache
chunks, the task's ``.work`` folder, records), so a unit requeued after preemption, timeout or
``scontrol requeue`` runs again and skips what is already finished."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from ..checkpoint import Checkpoint, load_checkpoint
from ..runner import (Job, checkpoint_name, extract_features, feature_entry, feature_needs, job_context,
                      read_record, row_selection, run_job, shared_needs)


@dataclass
class WorkUnit:
    kind: str                 # "features" or "probe"
    key: str                  # stable across submissions: how a rerun recognises the same work
    label: str
    spec: str                 # the checkpoint
    jobs: list[Job] = field(default_factory=list)
    needs: list[list[tuple[str, str]]] = field(default_factory=list)  # features: (role, pooling) per job
    entries: list[str] = field(default_factory=list)  # features: cache folders it fills
    record: str | None = None           # probe: the record it writes
    after: list[str] = field(default_factory=list)    # probe: keys of the features units it reads
    force_before: float | None = None   # probe (--force): redo a record written before this time

    def finished(self) -> bool:
        if self.kind == "features":
            return all(Path(e).is_dir() for e in self.entries)
        rec = Path(self.record)
        return read_record(rec) is not None and (self.force_before is None or rec.stat().st_mtime >= self.force_before)


class UnitRunner(Checkpointable):
    """The submitted callable. ``checkpoint()`` (inherited) resubmits this same object: nothing
    needs saving at preemption because every finished step is already on disk."""

    def __init__(self, unit: WorkUnit) -> None:
        self.unit = unit

    def __call__(self) -> dict[str, Any]:
        u = self.unit
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731 - job logs, one line each
        import jepa_eval
        log(f"unit   {u.kind}: {u.label} (code: {Path(jepa_eval.__file__).parent})")
        ck = load_checkpoint(u.spec, cache=u.jobs[0].cache if u.jobs else None)
        if u.kind == "features":  # one split: every pooling its jobs read comes from one encoder pass
            wanted = shared_needs((ctx, needs) for job, needs in zip(u.jobs, u.needs)
                                  if (ctx := job_context(job, ck, progress=False)) is not None)
            for job, needs in zip(u.jobs, u.needs):
                extract_features(job, needs, ck, progress=False, log=log, wanted=wanted)
            return {"kind": u.kind, "entries": u.entries, **_where()}
        job = u.jobs[0]
        rec = Path(u.record)
        force = u.force_before is not None and rec.exists() and rec.stat().st_mtime < u.force_before
        path = run_job(job, ck, force=force, progress=False, log=log)
        return {"kind": u.kind, "record": str(path) if path else None, **_where()}


def _where() -> dict[str, Any]:
    """Where the unit ran (also shows that a nested submission did not inherit its parent's job)."""
    import jepa_eval
    return {"host": os.uname().nodename, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "code": str(Path(jepa_eval.__file__).parent)}


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_units(jobs: list[Job], checkpoints: dict[str, Checkpoint], out: Path,
               force: bool = False) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """Features units (one per checkpoint, encoder and dataset split) and probe units (one per
    missing record), leaving out finished work: existing records (unless ``force``) and cache
    entries that are already complete."""
    started = time.time()
    groups: dict[str, WorkUnit] = {}
    entry_of: dict[tuple[str, str], Path] = {}  # (group key, pooling) -> cache folder, computed once
    probes: list[WorkUnit] = []
    for job in jobs:
        ctx = job_context(job, checkpoints[job.spec], progress=False)
        if ctx is None:  # a context encoder the checkpoint lacks; run_job logs the skip
            continue
        record = ctx.workdir.with_suffix(".json")
        if not force and read_record(record) is not None:
            continue
        probe = WorkUnit("probe", str(record.relative_to(out)), job.label, job.spec, [job], record=str(record),
                         force_before=started if force else None)
        probes.append(probe)
        entry = ctx.entry
        for role, pooling in feature_needs(entry):
            split, n = entry.splits[role], entry.max_samples.get(role)
            # one unit per distinct image set: split_key also tells transforms and task row selections apart
            gkey = "features/" + _digest([job.spec, ctx.split_key(role)])
            if (gkey, pooling) not in entry_of:
                entry_of[gkey, pooling] = feature_entry(ctx, role, pooling)
            path = entry_of[gkey, pooling]
            if path.is_dir():
                continue
            unit = groups.setdefault(gkey, WorkUnit(
                "features", gkey, f"{checkpoint_name(job.spec)} [{job.encoder}] features {ctx.dataset_name}:"
                f"{split}" + (f" (max {n})" if n else "") + (" (task's rows)" if row_selection(entry, role) else ""),
                job.spec))
            if gkey not in probe.after:
                probe.after.append(gkey)
            if str(path) in unit.entries:
                continue
            unit.entries.append(str(path))
            if unit.jobs and unit.jobs[-1] is job:
                unit.needs[-1].append((role, pooling))
            else:
                unit.jobs.append(job)
                unit.needs.append([(role, pooling)])
    return list(groups.values()), probes


# -- what a job runs: a frozen copy of the code, a clean environment ------------------------------
def _package_dirs() -> list[Path]:
    import importlib.util
    dirs = []
    for name in ("jepa_eval", "pretrain"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.append(Path(list(spec.submodule_search_locations)[0]))
    return dirs


def snapshot_code(folder: Path) -> Path:
    """Copy the ``jepa_eval`` and ``pretrain`` packages to ``folder/code-<hash>`` (reused while the
    code is unchanged). Jobs put it first on PYTHONPATH, so a requeued job runs what was submitted
    even if the working tree has moved on."""
    dirs = _package_dirs()
    h = hashlib.sha256()
    for pkg in dirs:
        for f in sorted(pkg.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                h.update(str(f.relative_to(pkg.parent)).encode())
                h.update(f.read_bytes())
    dest = folder / f"code-{h.hexdigest()[:12]}"
    if dest.is_dir():
        return dest
    tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
    for pkg_dir in dirs:
        shutil.copytree(pkg_dir, tmp / pkg_dir.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        os.replace(tmp, dest)
    except OSError:  # another submission made the same snapshot meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def job_setup(snapshot: Path) -> list[str]:
    """Shell lines a job runs first: the snapshot goes first on PYTHONPATH. ``python -m`` would
    put the working directory (often a checkout) before it; PYTHONSAFEPATH (Python >= 3.11) stops
    that while relative paths keep working."""
    return ["export PYTHONSAFEPATH=1", f"export PYTHONPATH={shlex.quote(str(snapshot))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def freeze_battery(job: Job, folder: Path) -> Job:
    """Point a job at a copy of its battery YAML (shipped batteries are frozen with the code)."""
    path = Path(job.battery)
    if not path.is_file():
        return job
    text = path.read_bytes()
    dest = folder / "batteries" / hashlib.sha256(text).hexdigest()[:12] / path.name  # keeps the battery name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(text)
    return replace(job, battery=str(dest))
