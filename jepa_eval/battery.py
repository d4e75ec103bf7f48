"""Batteries: YAML files naming tasks and their parameters, validated before anything runs.

```yaml
description: what it is for
tasks:
  - task: knn                        # a registered task
    dataset: [fashion-mnist, digits] # a name, or alternatives: the first one available is used
    root: $CLEVR_ROOT                # optional; environment variables are expanded
    splits: {train: train, test: test}
    max_samples: {train: 10000}      # optional seeded, class-stratified subsets
    pooling: lastPOOL                # or a list of those the task accepts; default: the task's own
    params: {ks: [10, 20]}           # checked against the task's typed parameters
    optional: true                   # skip (with a note) instead of failing when the data is absent
    protocol: "VISSL CLEVR linear"   # optional: the published protocol the entry follows (shown in reports)
    transform: resize-crop           # optional: evaluation transform (resize-crop | square); default: the dataset's
```"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config_io import YamlLoader, read_yaml, type_name, type_ok
from .datasets.base import EVAL_TRANSFORMS
from .errors import UserError, did_you_mean
from .task import TASKS, build_params


_Loader = YamlLoader   # the shared loader (1e-3 is a float); the old name stays for importers

ENTRY_KEYS = {"task", "id", "dataset", "root", "splits", "max_samples", "pooling", "params", "seed", "optional",
              "protocol", "transform"}


@dataclass
class BatteryEntry:
    id: str
    task: str
    datasets: list[str]
    root: str | None
    splits: dict[str, str]
    max_samples: dict[str, int]
    poolings: list[str]
    params: Any
    raw_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    optional: bool = False   # skipped with a note (not an error) when none of its datasets is present
    protocol: str | None = None   # the published protocol this entry follows (a description, not identity)
    transform: str | None = None  # evaluation transform; None until resolved: the dataset's own
    fallback: str | None = None   # set when an alternative dataset runs: why the earlier ones did not

    def config(self) -> dict[str, Any]:
        """What identifies this entry's result (everything except the display id and protocol note).
        The transform counts only when it is not the square resize every record used before it existed,
        so older records stay valid and a changed transform never reuses a record."""
        extra = {"transform": self.transform} if self.transform not in (None, "square") else {}
        return {"task": self.task, "splits": self.splits, "max_samples": self.max_samples,
                "poolings": self.poolings, "params": self.raw_params, "seed": self.seed, **extra}


@dataclass
class Battery:
    name: str
    description: str
    entries: list[BatteryEntry]
    path: str


def builtin_batteries() -> dict[str, Path]:
    folder = resources.files("jepa_eval") / "batteries"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")   # a record file name: no separators, no '..'


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _typed(raw: dict, key: str, hint: Any, where: str) -> None:
    if key in raw and not type_ok(raw[key], hint):
        raise UserError(f"{where}: '{key}' must be {type_name(hint)}, got {raw[key]!r}")


def check_entry_id(entry_id: str, where: str) -> str:
    """Entry ids name record files: a safe name, so no record is ever written outside ``--out``."""
    if not SAFE_ID.fullmatch(entry_id) or ".." in entry_id:
        raise UserError(f"{where}: id '{entry_id}' must be a plain name (letters, digits, '.', '_', '-', '+'; "
                        f"no path separators or '..')")
    return entry_id


def check_dataset_names(names: list[str], where: str) -> None:
    """Every alternative must be a known dataset: a typo is an error, never a silent fallback."""
    from .datasets import DATASETS
    for name in names:
        if name not in DATASETS:
            raise UserError(f"{where}: unknown dataset '{name}'{did_you_mean(name, DATASETS.names())}; "
                            f"known: {', '.join(DATASETS.names())}")


def _entry(raw: Any, where: str) -> BatteryEntry:
    if not isinstance(raw, dict) or "task" not in raw:
        raise UserError(f"{where}: each task entry must be a mapping with a 'task' key")
    unknown = sorted(map(str, set(raw) - ENTRY_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], ENTRY_KEYS)}")
    for key, hint in (("task", str), ("id", str | int), ("dataset", str | list[str]), ("root", str | None),
                      ("splits", dict[str, str] | None), ("max_samples", dict | None),
                      ("pooling", str | list[str] | None), ("params", dict | None), ("seed", int),
                      ("optional", bool)):
        _typed(raw, key, hint, where)
    task_cls = TASKS.get(str(raw["task"]))
    params_raw = raw.get("params") or {}
    params = build_params(task_cls, params_raw, where)
    if "dataset" not in raw:
        raise UserError(f"{where}: task '{raw['task']}' needs a 'dataset'")
    datasets = _as_list(raw["dataset"])
    if not datasets:
        raise UserError(f"{where}: 'dataset' names no dataset")
    check_dataset_names(datasets, where)
    splits = {role: role for role in task_cls.splits}
    given_splits = raw.get("splits") or {}
    for role, split in given_splits.items():
        if role not in splits:
            raise UserError(f"{where}: task '{raw['task']}' has no split role '{role}'"
                            f"{did_you_mean(str(role), splits)}; roles: {', '.join(splits)}")
        if not isinstance(split, str) or not split:
            raise UserError(f"{where}: splits.{role} must be a split name, got {split!r}")
    splits.update({str(k): str(v) for k, v in given_splits.items()})
    max_samples = raw.get("max_samples") or {}
    for role, n in max_samples.items():
        if role not in splits:
            raise UserError(f"{where}: max_samples names the role '{role}'{did_you_mean(str(role), splits)}, "
                            f"which task '{raw['task']}' does not read; roles: {', '.join(splits)}")
        if not type_ok(n, int) or n < 1:
            raise UserError(f"{where}: max_samples.{role} must be a positive integer, got {n!r}")
    poolings = _as_list(raw.get("pooling") or list(task_cls.poolings))
    from .features import check_pooling
    for p in poolings:
        check_pooling(p)
    problem = task_cls.pooling_problem(poolings)   # here, not on the cluster after the features are extracted
    if problem:
        raise UserError(f"{where}: {problem}")
    root = os.path.expandvars(str(raw["root"])) if raw.get("root") else None
    if root and "$" in root:  # an unset variable: no root, so the dataset's own error explains what to set
        root = None
    seed = raw.get("seed", 0)
    protocol = raw.get("protocol")
    if protocol is not None and (not isinstance(protocol, str) or not protocol.strip()):
        raise UserError(f"{where}: 'protocol' must be a non-empty text naming the protocol the entry follows")
    transform = raw.get("transform")
    if transform is not None and transform not in EVAL_TRANSFORMS:
        raise UserError(f"{where}: 'transform' must be one of {', '.join(EVAL_TRANSFORMS)}, not {transform!r}")
    entry_id = check_entry_id(str(raw.get("id") or f"{raw['task']}-{datasets[0]}"), where)
    return BatteryEntry(entry_id, str(raw["task"]), datasets, root, splits, dict(max_samples), poolings,
                        params, dict(params_raw), seed, bool(raw.get("optional", False)),
                        " ".join(protocol.split()) if protocol else None, transform)


def load_battery(name_or_path: str) -> Battery:
    """A shipped battery by name, or a YAML file by path."""
    builtin = builtin_batteries()
    path = builtin.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise UserError(f"unknown battery '{name_or_path}'{did_you_mean(name_or_path, builtin)}; "
                        f"shipped: {', '.join(sorted(builtin))} (or give a YAML path)")
    raw = read_yaml(path, "battery")
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list) or not raw["tasks"]:
        raise UserError(f"battery {path} must be a mapping with a non-empty 'tasks' list")
    unknown = sorted(map(str, set(raw) - {"description", "tasks"}))
    if unknown:
        raise UserError(f"battery {path}: unknown top-level key '{unknown[0]}'; keys: description, tasks")
    entries = [_entry(t, f"battery {path.name}, task #{i + 1}") for i, t in enumerate(raw["tasks"])]
    ids = [e.id for e in entries]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise UserError(f"battery {path.name}: two entries share the id '{dup}'; give one an 'id'")
    return Battery(path.stem, str(raw.get("description", "")), entries, str(path))
