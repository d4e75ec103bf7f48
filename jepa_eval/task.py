"""Tasks: small classes that register by name and turn cached features into metrics.

A task declares its parameters as a dataclass (``Params``) so batteries are type-checked before
anything runs, and implements ``run(ctx) -> TaskResult``. The engine never names a task."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config_io import from_dict
from .errors import UserError
from .registry import Registry

TASKS: Registry[type["Task"]] = Registry("task", "jepa_eval.tasks")


@dataclass
class TaskResult:
    metrics: dict[str, Any]                      # the numbers a report shows, e.g. {"top1": 81.2}
    chosen: dict[str, Any] = field(default_factory=dict)   # hyperparameters the task selected
    selected_on: str | None = None               # the split they were selected on (never the test split)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the whole grid, per-seed numbers


class Task:
    """Base class. Subclasses set ``name`` (via ``register_task``), ``Params`` and ``run``."""
    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")   # roles whose features the task reads
    poolings: ClassVar[tuple[str, ...]] = ("lastPOOL",)       # default feature sets
    classification: ClassVar[bool] = False   # needs at least two classes in its training split

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any) -> None:
        self.params = params

    def run(self, ctx: "TaskContext") -> TaskResult:  # noqa: F821 - defined in jepa_eval.runner
        raise NotImplementedError

    def check(self, sizes: dict[str, int], class_counts: dict[str, list[int]]) -> str | None:
        """A problem with this data found before any work (images per role, images per class per role).
        The rule for every grid: a value the data cannot support (a k above the training-set size) is
        refused, never clamped, so a metric's name always says what was computed."""
        return None


def register_task(name: str):
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)
    return decorator


def probe_config(params: Any, config_cls: type, seed: int) -> Any:
    """The probe's config from task ``params`` that extend it (a ``Params(ProbeConfig)`` subclass), with the
    run's ``seed``: the task layer adds its own fields without repeating the probe's."""
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


def check_data(task: Task, ctx: Any) -> None:
    """Refuse data a task cannot give a correct number on, before any feature is extracted."""
    import numpy as np
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
