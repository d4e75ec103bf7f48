"""Runs batteries: checkpoints x encoders x battery entries -> result records.

The unit of work is a ``Job`` (one checkpoint, one encoder, one entry). ``plan`` lists the jobs a
battery needs, ``run_job`` does one: it claims the job with a lock file (two processes on one output
folder never both run it), skips it when its record exists, and writes the record atomically.
Launchers (in-process, submitit) only decide where ``run_job`` runs."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .battery import Battery, BatteryEntry, load_battery
from .checkpoint import Checkpoint, checkpoint_name, load_checkpoint
from .datasets import get_dataset
from .datasets.base import SubsetDataset, eval_transform_id
from .errors import UserError, write_error
from .features import FeatureCache, Features
from .results import (SCHEMA, classes_hash, git_commit, now, read_record, record_id, thread_counts, versions,
                      write_record)
from .task import TASKS, check_data

ENCODERS = ("target", "context")


@dataclass
class TaskContext:
    """What a task sees: features by role and pooling, the dataset, a scratch folder, a seed."""
    checkpoint: Checkpoint
    encoder: str
    entry: BatteryEntry
    dataset_name: str
    cache: FeatureCache
    workdir: Path
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    show_progress: bool = True
    feature_dtype: str = "float16"
    # split_key -> poolings that pending work reads from that split: the first request for a split
    # extracts them all in one encoder pass (see shared_needs)
    wanted: dict[tuple, set[str]] = field(default_factory=dict)
    _got: dict[tuple[str, str], Features] = field(default_factory=dict, repr=False)

    @property
    def poolings(self) -> list[str]:
        return self.entry.poolings

    def split_key(self, role: str) -> tuple:
        """What makes two roles (of any jobs) read the same images: same key, same dataset."""
        e = self.entry
        return (self.checkpoint.meta.get("sha256"), self.encoder, self.dataset_name, e.root, e.splits[role],
                e.max_samples.get(role), e.seed, self.feature_dtype, e.transform, row_selection(e, role))

    def dataset(self, role: str):
        """The role's images as the task reads them: the split under the entry's eval transform, then
        narrowed to the rows the task selects (``select_rows``, e.g. low-shot subsets) before extraction."""
        if role not in self.entry.splits:
            raise UserError(f"entry '{self.entry.id}' has no split for role '{role}'")
        e = self.entry
        ds = get_dataset(self.dataset_name, e.root, split=e.splits[role],
                         image_size=int(self.checkpoint.meta["img_size"]),
                         max_samples=e.max_samples.get(role), seed=e.seed, transform=e.transform)
        if row_selection(e, role) is None:
            return ds
        rows = np.asarray(TASKS.get(e.task).select_rows(e.params, role, ds, e.seed), dtype=np.int64)
        if len(rows) == 0 or np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(ds):
            raise RuntimeError(f"task '{e.task}' selected invalid rows (need sorted, unique, in range)")
        digest = hashlib.sha256(rows.tobytes()).hexdigest()[:16]   # the cache key names exactly these rows
        return SubsetDataset(ds, rows, {"selected_rows": f"{len(rows)}-{digest}", "selected_by": e.task})

    def features(self, role: str, pooling: str) -> Features:
        """One pooling of a role; the first call for a role also fills every other pooling this entry
        (and ``wanted``) reads from that split, from the same encoder pass."""
        if (role, pooling) not in self._got:
            own = [pooling, *(p for r, p in feature_needs(self.entry) if r == role)]
            self.features_many(role, own, sorted(self.wanted.get(self.split_key(role), ())))
        return self._got[role, pooling]

    def features_many(self, role: str, poolings: Iterable[str], others: Iterable[str] = ()) -> dict[str, Features]:
        """``poolings`` of a role, plus ``others`` (what other jobs read) when the encoder can make them:
        a pooling another job cannot have must fail in that job, not in this one."""
        poolings, others = list(dict.fromkeys(poolings)), [p for p in others if p not in poolings]
        if others:
            try:
                return self._fetch(role, poolings + others)
            except UserError:
                pass
        return self._fetch(role, poolings)

    def _fetch(self, role: str, poolings: list[str]) -> dict[str, Features]:
        got = self.cache.get_or_extract_many(self.checkpoint, self.encoder, poolings, self.dataset(role),
                                             dtype=self.feature_dtype, device=self.device,
                                             progress=self.show_progress)
        self._got.update(((role, p), f) for p, f in got.items())
        return got

    def data_summary(self) -> dict[str, dict[str, Any]]:
        """Per role: the split and how many images the task read (from the features it fetched, else the
        split's size), for the record and the report's data table."""
        out = {}
        for role, split in self.entry.splits.items():
            got = [f for (r, _), f in self._got.items() if r == role]
            out[role] = {"split": split, "n": len(got[0].y) if got else len(self.dataset(role))}
        return out

    def progress(self, iterable: Iterable, desc: str = "", **kw: Any) -> Iterable:
        return tqdm(iterable, desc=desc, disable=not self.show_progress, dynamic_ncols=True, **kw)


@dataclass
class Job:
    spec: str
    encoder: str
    battery: str          # a shipped battery name or a YAML path
    entry_id: str
    out: str
    cache: str
    roots: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{checkpoint_name(self.spec)} [{self.encoder}] {self.entry_id}"


def pretrain_dataset(meta: dict[str, Any]) -> str | None:
    """The dataset a checkpoint was pretrained on, where its config says (this suite's runs), else None."""
    data = (meta.get("config") or {}).get("data") or {}
    return str(data["dataset"]) if data.get("dataset") else None


def resolve_dataset(entry: BatteryEntry, roots: dict[str, str]) -> tuple[str, BatteryEntry]:
    """The first of the entry's datasets that can be opened (with the CLI's --root overrides). A fallback
    to a later alternative is kept on the entry (``fallback``), so it is printed and recorded."""
    errors = []
    for name in entry.datasets:
        root = roots.get(name) or entry.root  # the command line overrides the battery
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
        dataset, entry = resolve_dataset(entry, job.roots)
    except UserError as e:
        if not entry.optional:
            raise
        return battery, None, f"optional entry, data absent ({e})", Path(), ""
    path, rid = record_path(job, ck, entry, dataset)
    return battery, entry, dataset, path, rid


def row_selection(entry: BatteryEntry, role: str) -> str | None:
    """Which rows of a role's split a task keeps before extraction, as a cheap identity (None: all).
    A task opts in with ``selected_roles`` and a ``select_rows(params, role, dataset, seed)`` classmethod."""
    task_cls = TASKS.get(entry.task)
    if role not in getattr(task_cls, "selected_roles", ()):
        return None
    return f"{entry.task}:{json.dumps(entry.raw_params, sort_keys=True, default=str)}"


def feature_needs(entry: BatteryEntry) -> list[tuple[str, str]]:
    """The (role, pooling) feature sets an entry's task reads. A task may narrow them with a
    ``feature_needs(entry)`` classmethod; by default it is every split role with every pooling."""
    custom = getattr(TASKS.get(entry.task), "feature_needs", None)
    if custom is not None:
        return [(str(r), str(p)) for r, p in custom(entry)]
    return [(role, pooling) for role in entry.splits for pooling in entry.poolings]


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
        record = {
            "schema": SCHEMA, "record_id": rid, "created": now(),
            "checkpoint": {"spec": job.spec, "name": checkpoint_name(job.spec), "sha256": ck.meta.get("sha256"),
                           "meta": {k: v for k, v in ck.meta.items() if k != "config"}},
            "task": entry.task, "entry": entry.id, "battery": battery.name, "dataset": dataset,
            "root": entry.root, "data_root": train_data.identity.get("root"), "dataset_fallback": entry.fallback,
            "classes": {"n": len(train_data.classes), "sha256": classes_hash(train_data.classes)},
            "splits": entry.splits, "max_samples": entry.max_samples,
            "data": ctx.data_summary(), "pretrain_dataset": pretrain_dataset(ck.meta),
            "encoder": job.encoder, "pooling": result.details.pop("pooling", ",".join(entry.poolings)),
            "protocol": entry.protocol,
            "eval_transform": eval_transform_id(entry.transform or "square", int(ck.meta["img_size"])),
            "params": entry.raw_params, "primary_metric": next(iter(result.metrics)),
            "metrics": result.metrics, "chosen": result.chosen, "selected_on": result.selected_on,
            "details": result.details, "seed": entry.seed, "git_commit": git_commit(),
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
         encoders: Iterable[str] = ("target",), roots: dict[str, str] | None = None) -> list[Job]:
    battery = load_battery(battery_ref)
    for enc in encoders:
        if enc not in ENCODERS:
            raise UserError(f"encoder must be one of {', '.join(ENCODERS)}, not '{enc}'")
    return [Job(spec, enc, battery_ref, e.id, str(out), str(cache), dict(roots or {}))
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
    for spec in dict.fromkeys(j.spec for j in jobs):
        loaded[spec] = load_checkpoint(spec)
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
                       log=lambda m: print(m, file=sys.stderr), wanted=wanted)
        if path is not None:
            done.append(path)
    return done
