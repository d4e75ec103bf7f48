"""Tasks: small classes that register by name and turn cached features into metrics.

A task declares its parameters as a dataclass (``Params``) so batteries are type-checked before
anything runs, and implements ``run(ctx) -> TaskResult``. The engine never names a task."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any) -> None:
        self.params = params

    def run(self, ctx: "TaskContext") -> TaskResult:  # noqa: F821 - defined in jepa_eval.runner
        raise NotImplementedError


def register_task(name: str):
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)
    return decorator


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def probe_config(params: Any, config_cls: type, seed: int) -> Any:
    """The probe's config from task ``params`` that extend it (a ``Params(ProbeConfig)`` subclass), with the
    run's ``seed``: the task layer adds its own fields without repeating the probe's."""
    return config_cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(config_cls)
                         if f.name != "seed"}, seed=seed)


def build_params(task_cls: type[Task], given: dict[str, Any] | None, where: str) -> Any:
    """Validate a battery's parameters against the task's ``Params`` dataclass."""
    given = dict(given or {})
    if "seed" in given:   # the entry's seed also picks its subsets: one place, so the two cannot disagree
        raise UserError(f"{where}: 'seed' is not a task parameter; give it on the entry, beside 'params'")
    fields = {f.name: f for f in dataclasses.fields(task_cls.Params) if f.name != "seed"}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        from .errors import did_you_mean
        raise UserError(f"{where}: task '{task_cls.name}' has no parameter '{unknown[0]}'"
                        f"{did_you_mean(unknown[0], fields)}; parameters: {', '.join(fields) or 'none'}")
    hints = typing.get_type_hints(task_cls.Params)
    for key, value in given.items():
        if not _type_ok(value, hints[key]):
            name = getattr(hints[key], "__name__", str(hints[key]))
            raise UserError(f"{where}: parameter '{key}' of task '{task_cls.name}' must be {name}, "
                            f"got {value!r}")
    params = task_cls.Params(**given)
    check = getattr(params, "validate", None)
    if check:
        problem = check()
        if problem:
            raise UserError(f"{where}: task '{task_cls.name}': {problem}")
    return params
