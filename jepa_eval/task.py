"""Tasks: small classes that register by name and turn cached features into metrics.

The contract a task declares, checked by ``tests/test_task_contract.py`` for every registered task:

- ``Params``: a dataclass of its parameters (a probe's config subclassed where the probe has one), so
  batteries are type-checked before anything runs;
- ``primary`` (or ``primary_metric()`` when it depends on the parameters): the metrics key a report shows;
- ``poolings`` (the default feature sets) and ``accepts`` (the poolings it can read; ``single_pooling``
  when it reads only one): the battery loader refuses any other;
- ``run(ctx: TaskContext) -> TaskResult``, and optional hooks with defaults here (``check``,
  ``feature_needs``, ``select_rows``, ``figures``).

The engine never names a task."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config_io import from_dict
from .datasets import get_dataset
from .datasets.base import ImageDataset, SubsetDataset
from .errors import UserError
from .registry import Registry

if TYPE_CHECKING:
    from .battery import BatteryEntry
    from .checkpoint import Checkpoint
    from .features import FeatureCache, Features
    from .report.figures import ReportFigure

TASKS: Registry[type["Task"]] = Registry("task", "jepa_eval.tasks")
POOLED = ("lastPOOL", "concatPOOL*")    # one vector per image: what the classic probes read


@dataclass
class TaskResult:
    metrics: dict[str, Any]                      # the numbers a report shows, e.g. {"top1": 81.2}
    chosen: dict[str, Any] = field(default_factory=dict)   # hyperparameters the task selected
    selected_on: str | None = None               # the split they were selected on (never the test split)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the whole grid, per-seed numbers
    pooling: str | None = None   # the feature set the numbers come from, when the task chose one (else the entry's)


@dataclass
class TaskContext:
    """What a task sees: features by role and pooling, the dataset, a scratch folder, a seed.
    The runner builds one per job."""
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
    # extracts them all in one encoder pass (see runner.shared_needs)
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

    def dataset(self, role: str) -> ImageDataset:
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


class Task:
    """Base class. Subclasses set ``name`` (via ``register_task``), a docstring (``jepa-eval list`` shows
    its first line), ``Params``, ``primary``, ``poolings``/``accepts`` and ``run``."""
    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")   # roles whose features the task reads
    poolings: ClassVar[tuple[str, ...]] = ("lastPOOL",)       # default feature sets
    accepts: ClassVar[tuple[str, ...]] = POOLED    # poolings (fnmatch patterns) a battery may give it
    single_pooling: ClassVar[bool] = False         # reads exactly one pooling
    pooling_note: ClassVar[str] = ""               # why, for the loader's error line
    primary: ClassVar[str] = ""                    # the metrics key that is the task's number
    classification: ClassVar[bool] = False   # needs at least two classes in its training split
    selected_roles: ClassVar[tuple[str, ...]] = ()   # roles narrowed by ``select_rows`` before extraction
    figure_rank: ClassVar[int] = 0   # where its ``figures`` go in a report: by rank, then task name

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any) -> None:
        self.params = params

    def primary_metric(self) -> str:
        """The metrics key the report shows for this task; every result must hold it."""
        return self.primary

    def run(self, ctx: TaskContext) -> TaskResult:
        raise NotImplementedError

    def check(self, sizes: dict[str, int], class_counts: dict[str, list[int]]) -> str | None:
        """A problem with this data found before any work (images per role, images per class per role).
        The rule for every grid: a value the data cannot support (a k above the training-set size) is
        refused, never clamped, so a metric's name always says what was computed."""
        return None

    @classmethod
    def pooling_problem(cls, poolings: list[str]) -> str | None:
        """Why the task cannot read ``poolings`` (None when it can): checked when a battery loads."""
        bad = [p for p in poolings if not any(fnmatchcase(p, a) for a in cls.accepts)]
        if not bad and not (cls.single_pooling and len(poolings) != 1):
            return None
        accepted = " or ".join(a.replace("*", "N") for a in cls.accepts)
        note = f" ({cls.pooling_note})" if cls.pooling_note else ""
        return (f"task '{cls.name}' reads {'one pooling' if cls.single_pooling else 'poolings'} of {accepted}, "
                f"not {', '.join(bad or poolings)}{note}")

    @classmethod
    def feature_needs(cls, entry: BatteryEntry) -> list[tuple[str, str]]:
        """The (role, pooling) feature sets an entry reads: by default every split role with every pooling."""
        return [(role, pooling) for role in entry.splits for pooling in entry.poolings]

    @classmethod
    def select_rows(cls, params: Any, role: str, dataset: ImageDataset, seed: int) -> np.ndarray:
        """The sorted rows of a ``selected_roles`` role's split the task reads (see ``row_selection``)."""
        raise NotImplementedError

    @classmethod
    def figures(cls, records: list[dict[str, Any]]) -> list[ReportFigure]:
        """Report figures drawn from this task's records (the report passes only those); none by default."""
        return []


def register_task(name: str):
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)
    return decorator


def probe_config(params: Any, config_cls: type, seed: int) -> Any:
    """The probe's config from task ``params`` that extend it (a ``Params(ProbeConfig)`` subclass), with the
    run's ``seed``: the task layer adds its own fields without repeating the probe's."""
    import dataclasses
    return config_cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(config_cls)
                         if f.name != "seed"}, seed=seed)


def build_params(task_cls: type[Task], given: dict[str, Any] | None, where: str) -> Any:
    """Validate a battery's parameters against the task's ``Params`` dataclass (types, unknown keys,
    then its ``validate()`` ranges), through the shared config loader."""
    given = dict(given or {})
    if "seed" in given:   # the entry's seed also picks its subsets: one place, so the two cannot disagree
        raise UserError(f"{where}: 'seed' is not a task parameter; give it on the entry, beside 'params'")
    return from_dict(task_cls.Params, given, f"{where}: task '{task_cls.name}'", skip=("seed",),
                     what="parameter")


def row_selection(entry: BatteryEntry, role: str) -> str | None:
    """Which rows of a role's split a task keeps before extraction, as a cheap identity (None: all).
    A task opts in with ``selected_roles`` and a ``select_rows(params, role, dataset, seed)`` classmethod."""
    if role not in TASKS.get(entry.task).selected_roles:
        return None
    return f"{entry.task}:{json.dumps(entry.raw_params, sort_keys=True, default=str)}"


def feature_needs(entry: BatteryEntry) -> list[tuple[str, str]]:
    """The (role, pooling) feature sets an entry's task reads (``Task.feature_needs``)."""
    return [(str(r), str(p)) for r, p in TASKS.get(entry.task).feature_needs(entry)]


def check_data(task: Task, ctx: TaskContext) -> None:
    """Refuse data a task cannot give a correct number on, before any feature is extracted."""
    sizes, counts = {}, {}
    for role in ctx.entry.splits:
        ds = ctx.dataset(role)
        sizes[role] = len(ds)
        counts[role] = np.bincount(ds.targets.astype(np.int64)).tolist() if ds.targets.ndim == 1 and \
            np.issubdtype(ds.targets.dtype, np.integer) and len(ds.targets) else []
    role = next(iter(ctx.entry.splits))
    present = sum(1 for c in counts[role] if c > 0)
    if task.classification and present < 2:
        raise UserError(f"entry '{ctx.entry.id}': task '{task.name}' classifies, but the '{role}' split of "
                        f"{ctx.dataset_name} has {present} class(es) with images; it needs at least two")
    problem = task.check(sizes, counts)
    if problem:
        raise UserError(f"entry '{ctx.entry.id}' on {ctx.dataset_name}: {problem}")
