"""Runs batteries: checkpoints x encoders x battery entries -> result records.

The unit of work is a ``Job`` (one checkpoint, one encoder, one entry). ``plan`` lists the jobs a
battery needs, ``run_job`` does one: it claims the job with a lock file (two processes on one output
folder never both run it), skips it when its record exists, and writes the record atomically.
Launchers (in-process, submitit) only decide where ``run_job`` runs."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from filelock import FileLock, Timeout

from .battery import Battery, BatteryEntry, load_battery
from .checkpoint import Checkpoint, checkpoint_name, load_checkpoint
from .datasets import get_dataset
from .datasets.base import eval_transform_id
from .errors import UserError, write_error
from .features import FeatureCache, Features
from .results import (SCHEMA, classes_hash, git_commit, now, read_record, record_id, thread_counts, versions,
                      write_record)
from .log import get_logger
from .task import TASKS, TaskContext, check_data, feature_needs, row_selection  # noqa: F401 - re-exported

log = get_logger(__name__)

ENCODERS = ("target", "context")


@dataclass
class Job:
    spec: str
    encoder: str
    battery: str          # a shipped battery name or a YAML path
    entry_id: str
    out: str
    cache: str
    roots: dict[str, str] = field(default_factory=dict)          # --root: replaces the battery's root
    default_roots: dict[str, str] = field(default_factory=dict)  # used where neither names one
    code_version: str | None = None   # the git commit that planned the job (a submitted job runs a copy)

    @property
    def label(self) -> str:
        return f"{checkpoint_name(self.spec)} [{self.encoder}] {self.entry_id}"


def pretrain_dataset(meta: dict[str, Any]) -> str | None:
    """The dataset a checkpoint was pretrained on, where its config says (this suite's runs), else None."""
    data = (meta.get("config") or {}).get("data") or {}
    return str(data["dataset"]) if data.get("dataset") else None


def resolve_dataset(entry: BatteryEntry, roots: dict[str, str],
                    default_roots: dict[str, str] | None = None) -> tuple[str, BatteryEntry]:
    """The first of the entry's datasets that can be opened (with the CLI's --root overrides, then the
    battery's root, then ``default_roots``). A fallback to a later alternative is kept on the entry
    (``fallback``), so it is printed and recorded."""
    errors = []
    for name in entry.datasets:
        # the command line overrides the battery, which overrides the defaults the command layer passed
        root = roots.get(name) or entry.root or (default_roots or {}).get(name)
        try:
            ds = get_dataset(name, root, split=next(iter(entry.splits.values())), image_size=8,
                             transform=entry.transform)
        except UserError as e:
            if name in roots:  # a root the user named is never silently replaced by another dataset
                raise
            errors.append(f"{name}: {e}")
            continue
        fallback = f"used '{name}' because " + " | ".join(errors) if errors else None
        if root != entry.root or fallback or entry.transform is None:  # the transform resolves to the dataset's own
            entry = BatteryEntry(**{**entry.__dict__, "root": root, "fallback": fallback,
                                    "transform": ds.eval_transform})
        return name, entry
    raise UserError(f"entry '{entry.id}': no dataset available: " + " | ".join(errors))


def record_path(job: Job, ck: Checkpoint, entry: BatteryEntry, dataset: str) -> tuple[Path, str]:
    rid = record_id({"sha256": ck.meta.get("sha256"), "encoder": job.encoder, "dataset": dataset,
                     "root": entry.root, **entry.config()})
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint_name(job.spec))
    return Path(job.out) / "records" / f"{safe}-{ck.meta['sha256'][:8]}" / f"{entry.id}-{job.encoder}-{rid}.json", rid


def resolve_job(job: Job, ck: Checkpoint) -> tuple[Battery, BatteryEntry | None, str, Path, str]:
    """The job's battery, entry (None when it asks for a context encoder the checkpoint lacks),
    dataset name and record path/id."""
    battery = load_battery(job.battery)
    entry = next((e for e in battery.entries if e.id == job.entry_id), None)
    if entry is None:
        raise UserError(f"battery {job.battery} has no entry '{job.entry_id}'")
    if job.encoder == "context" and not ck.meta.get("has_context_encoder", True):
        return battery, None, "this checkpoint has no separate context encoder", Path(), ""
    try:
        dataset, entry = resolve_dataset(entry, job.roots, job.default_roots)
    except UserError as e:
        if not entry.optional:
            raise
        return battery, None, f"optional entry, data absent ({e})", Path(), ""
    path, rid = record_path(job, ck, entry, dataset)
    return battery, entry, dataset, path, rid


def job_context(job: Job, ck: Checkpoint, progress: bool = True) -> TaskContext | None:
    """The context a job's task would see (None for a context encoder the checkpoint lacks)."""
    _, entry, dataset, path, _ = resolve_job(job, ck)
    if entry is None:
        return None
    return TaskContext(ck, job.encoder, entry, dataset, FeatureCache(job.cache), path.with_suffix(".work"),
                       seed=entry.seed, show_progress=progress)


def feature_entry(ctx: TaskContext, role: str, pooling: str) -> Path:
    """Where the cache keeps (or will keep) the features ``ctx.features(role, pooling)`` returns."""
    fields = FeatureCache.key_fields(ctx.checkpoint.meta, ctx.encoder, pooling, ctx.dataset(role),
                                     ctx.feature_dtype)
    return ctx.cache.root / ctx.cache.key(fields)


def shared_needs(work: Iterable[tuple[TaskContext, Iterable[tuple[str, str]]]]) -> dict[tuple, set[str]]:
    """The poolings each dataset split is read with across ``work`` ((context, needs) pairs): given to
    every context as ``wanted``, so the first job reading a split extracts them all in one pass."""
    wanted: dict[tuple, set[str]] = {}
    for ctx, needs in work:
        for role, pooling in needs:
            wanted.setdefault(ctx.split_key(role), set()).add(pooling)
    return wanted


def extract_features(job: Job, needs: Iterable[tuple[str, str]] | None = None,
                     checkpoint: Checkpoint | None = None, progress: bool = True,
                     log: Callable[[str], None] = print, wanted: dict[tuple, set[str]] | None = None
                     ) -> list[Features]:
    """Fill the feature cache for one job (all its ``feature_needs`` or the given ones) without
    running its task: launchers extract once per checkpoint and split, then run the probes. The
    poolings of one role (plus what ``wanted`` lists for its split) come from one encoder pass."""
    ck = checkpoint or load_checkpoint(job.spec, cache=job.cache)
    ctx = job_context(job, ck, progress)
    if ctx is None:
        return []
    needs = list(needs if needs is not None else feature_needs(ctx.entry))
    for role in dict.fromkeys(r for r, _ in needs):
        poolings = [p for r, p in needs if r == role]
        log(f"feats  {job.label}: {role} split '{ctx.entry.splits[role]}', {', '.join(poolings)}")
        ctx.features_many(role, poolings, sorted((wanted or {}).get(ctx.split_key(role), ())))
    return [ctx.features(role, pooling) for role, pooling in needs]


def run_job(job: Job, checkpoint: Checkpoint | None = None, force: bool = False, progress: bool = True,
            log: Callable[[str], None] = print, wanted: dict[tuple, set[str]] | None = None) -> Path | None:
    """Run one job unless its record exists; returns the record path (None if another process has it).
    ``wanted`` (see ``shared_needs``): poolings other jobs read, extracted in the same encoder pass."""
    ck = checkpoint or load_checkpoint(job.spec, cache=job.cache)
    battery, entry, dataset, path, rid = resolve_job(job, ck)
    if entry is None:
        log(f"skip   {job.label}: {dataset}")  # the reason
        return None
    if not force and read_record(path) is not None:
        log(f"done   {job.label} (record exists)")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_suffix(".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"busy   {job.label}: another process is running it")
        return None
    written = False
    try:
        if not force and read_record(path) is not None:  # finished by someone while we waited
            written = True
            return path
        if entry.fallback:
            log(f"note   {job.label}: {entry.fallback}")
        log(f"run    {job.label} on {dataset}")
        task = TASKS.get(entry.task)(entry.params)
        workdir = path.with_suffix(".work")
        ctx = TaskContext(ck, job.encoder, entry, dataset, FeatureCache(job.cache), workdir,
                          seed=entry.seed, show_progress=progress, wanted=wanted or {})
        train_data = ctx.dataset(next(iter(entry.splits)))
        check_data(task, ctx)   # before any feature is extracted: refuse what would record a wrong number
        t0 = time.time()
        result = task.run(ctx)
        primary = task.primary_metric()
        if primary not in result.metrics:   # a bug in the task, never the user's input: nothing is recorded
            raise RuntimeError(f"task '{entry.task}' declares primary metric '{primary}' but its result has "
                               f"only {', '.join(result.metrics) or 'no metrics'}")
        record = {
            "schema": SCHEMA, "record_id": rid, "created": now(),
            "checkpoint": {"spec": job.spec, "name": checkpoint_name(job.spec), "sha256": ck.meta.get("sha256"),
                           "meta": {k: v for k, v in ck.meta.items() if k != "config"}},
            "task": entry.task, "entry": entry.id, "battery": battery.name, "dataset": dataset,
            "root": entry.root, "data_root": train_data.identity.get("root"), "dataset_fallback": entry.fallback,
            "classes": {"n": len(train_data.classes), "sha256": classes_hash(train_data.classes)},
            "splits": entry.splits, "max_samples": entry.max_samples,
            "data": ctx.data_summary(), "pretrain_dataset": pretrain_dataset(ck.meta),
            "encoder": job.encoder, "pooling": result.pooling or ",".join(entry.poolings),
            "protocol": entry.protocol,
            "eval_transform": eval_transform_id(entry.transform or "square", int(ck.meta["img_size"])),
            "params": entry.raw_params, "primary_metric": primary,
            "metrics": result.metrics, "chosen": result.chosen, "selected_on": result.selected_on,
            "details": result.details, "seed": entry.seed, "git_commit": job.code_version or git_commit(),
            "versions": versions(), "threads": thread_counts(), "wall_time_s": round(time.time() - t0, 3)}
        try:
            write_record(path, record)
        except OSError as e:  # disk full, quota, file size limit: write_record removed its temporary file
            raise write_error(path, e, "the record", "nothing was recorded (rerun to compute it again)") from None
        written = True
        if workdir.exists():
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
        return path
    finally:
        lock.release()
        if written:  # a process that claimed this lock file meanwhile finds the record and stops; after a
            try:     # failure the file stays, so two processes can never hold two different lock files
                os.unlink(lock.lock_file)
            except OSError:
                pass


def plan(specs: list[str], battery_ref: str, out: str | os.PathLike, cache: str | os.PathLike,
         encoders: Iterable[str] = ("target",), roots: dict[str, str] | None = None,
         default_roots: dict[str, str] | None = None) -> list[Job]:
    """One job per checkpoint, encoder and battery entry. ``roots`` replace the battery's data roots;
    ``default_roots`` serve datasets for which neither names one."""
    battery = load_battery(battery_ref)
    for enc in encoders:
        if enc not in ENCODERS:
            raise UserError(f"encoder must be one of {', '.join(ENCODERS)}, not '{enc}'")
    commit = git_commit()
    return [Job(spec, enc, battery_ref, e.id, str(out), str(cache), dict(roots or {}), dict(default_roots or {}),
                commit)
            for spec in specs for enc in encoders for e in battery.entries]


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output folder {out} is not writable: {e.strerror or e}") from None


def run_in_process(jobs: list[Job], force: bool = False, progress: bool = True) -> list[Path]:
    """Run jobs here, loading each checkpoint once. Checkpoints are all loaded (validated) first."""
    loaded: dict[str, Checkpoint] = {}
    for job in jobs:
        if job.spec not in loaded:  # the sha256 of a file is remembered in the jobs' feature cache folder
            loaded[job.spec] = load_checkpoint(job.spec, cache=job.cache)
    pending = []  # jobs that will run: the poolings they read from each split are extracted together
    for job in jobs:
        try:
            ctx = job_context(job, loaded[job.spec], progress=False)
            if ctx is not None and (force or read_record(ctx.workdir.with_suffix(".json")) is None):
                pending.append((ctx, feature_needs(ctx.entry)))
        except UserError:
            continue  # run_job reports it when the job's turn comes
    for ctx, _ in pending:  # data a task cannot give a right number on fails the run before any job starts
        check_data(TASKS.get(ctx.entry.task)(ctx.entry.params), ctx)
    wanted = shared_needs(pending)
    done, current = [], None
    for job in jobs:
        if current is not None and current != job.spec:
            loaded[current].release()  # at most one checkpoint's weights in memory at a time
        current = job.spec
        path = run_job(job, loaded[job.spec], force=force, progress=progress,
                       log=log.info, wanted=wanted)
        if path is not None:
            done.append(path)
    return done
