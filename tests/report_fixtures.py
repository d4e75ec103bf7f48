"""Synthetic result records in the runner's format (no model runs: report tests stay fast)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jepa_eval.results import SCHEMA, record_id, write_record


def make_record(out: Path, name: str, entry: str, metrics: dict[str, float], *, encoder: str = "target",
                task: str = "knn", dataset: str = "digits", seed: int = 0, epoch: int | None = None,
                chosen: dict[str, Any] | None = None, selected_on: str | None = None,
                details: dict[str, Any] | None = None, pooling: str = "lastPOOL",
                source_format: str = "ijepa-official", sha_seed: str | None = None, **extra: Any) -> Path:
    sha = record_id({"ckpt": sha_seed or name})  # a stable fake hash per checkpoint file
    rid = record_id({"sha": sha, "entry": entry, "encoder": encoder, "seed": seed, "dataset": dataset})
    rec = {"schema": SCHEMA, "record_id": rid, "created": "2026-01-01T00:00:00+00:00",
           "checkpoint": {"spec": f"/runs/{name}.pth.tar", "name": name, "sha256": sha * 4,
                          "meta": {"source_format": source_format, "epoch": epoch, "width": 192, "depth": 12,
                                   "patch_size": 16, "img_size": 224}},
           "task": task, "entry": entry, "battery": "test", "dataset": dataset, "encoder": encoder,
           "pooling": pooling, "params": {}, "primary_metric": next(iter(metrics)), "metrics": metrics,
           "chosen": chosen or {}, "selected_on": selected_on, "details": details or {}, "seed": seed,
           "wall_time_s": 1.0, **extra}   # extra: e.g. splits, protocol, eval_transform
    path = out / "records" / name.replace("/", "_") / f"{entry}-{encoder}-{rid}.json"
    write_record(path, rec)
    return path
