"""The results store: one self-describing JSON record per (checkpoint, encoder, battery entry, config).

Records are written atomically (temp file, fsync, rename), so a crash never leaves half a record;
``load`` turns a folder of them into a long pandas table (one row per record and metric)."""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .atomic import atomic_write_json
from .errors import UserError

SCHEMA = 1
COLUMNS = ["record_id", "checkpoint", "sha256", "epoch", "source_format", "task", "entry", "dataset",
           "data", "pretrain_dataset", "transfer", "encoder", "pooling", "seed", "metric", "value", "primary",
           "chosen", "selected_on", "protocol", "train_split", "eval_transform", "path"]


def record_id(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from (None outside one, e.g. in a submitted job's copy
    of the code: its jobs carry the commit that planned them, ``Job.code_version``)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {}
    for pkg in ("jepa-eval", "torch", "timm", "numpy", "scikit-learn", "faiss-cpu", "faiss-gpu"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def classes_hash(classes: list) -> str:
    """Identifies a class index (names in label order): two records share it only if label i meant the same."""
    return hashlib.sha256(json.dumps([str(c) for c in classes]).encode()).hexdigest()[:16]


def thread_counts() -> dict[str, int | None]:
    """CPU threads the numbers were computed with (a reduction's order, hence its last digits, can follow them)."""
    import torch
    try:
        import faiss
        faiss_threads = int(faiss.omp_get_max_threads())
    except ImportError:
        faiss_threads = None
    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
            "faiss": faiss_threads}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write atomically: the record is either absent or whole, never partial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record, indent=1, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("schema") == SCHEMA and "metrics" in rec else None


def iter_records(dirs: Iterable[str | os.PathLike]) -> Iterable[tuple[Path, dict[str, Any]]]:
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise UserError(f"results folder not found: {root}")
        for path in sorted(root.rglob("*.json")):
            if path.name.startswith("."):
                continue
            rec = read_record(path)
            if rec is not None:
                yield path, rec


def load(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All records under ``dirs`` as one row per (record, metric); see ``COLUMNS``."""
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    from .report.data import describe_data, is_transfer
    rows = []
    for path, rec in iter_records(dirs):
        ck = rec.get("checkpoint", {})
        meta = ck.get("meta", {})
        data = {"data": describe_data(rec.get("data")), "pretrain_dataset": rec.get("pretrain_dataset"),
                "transfer": is_transfer(rec.get("pretrain_dataset"), rec.get("dataset"))}
        for metric, value in rec["metrics"].items():
            rows.append({"record_id": rec.get("record_id"), "checkpoint": ck.get("name"),
                         "sha256": ck.get("sha256"), "epoch": meta.get("epoch"),
                         "source_format": meta.get("source_format"), "task": rec.get("task"),
                         "entry": rec.get("entry"), "dataset": rec.get("dataset"), **data,
                         "encoder": rec.get("encoder"), "pooling": rec.get("pooling"),
                         "seed": rec.get("seed"), "metric": metric, "value": value,
                         "primary": metric == rec.get("primary_metric"), "chosen": rec.get("chosen"),
                         "selected_on": rec.get("selected_on"), "protocol": rec.get("protocol"),
                         "train_split": (rec.get("splits") or {}).get("train"),
                         "eval_transform": rec.get("eval_transform"), "path": str(path)})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Checkpoint [encoder] x entry table of primary metrics, as the report shows it: repeats as
    mean ± std (n), records of different weights never merged, missing cells kept as "—"."""
    from .report.tables import aggregate, pivot
    agg = aggregate(df)
    return pd.DataFrame() if agg.empty else pivot(agg)[1]
