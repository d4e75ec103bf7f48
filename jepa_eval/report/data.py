"""What data each result read: dataset, splits and image counts per task column, and whether a result
is a transfer (the checkpoint was pretrained on other data) or in-domain."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd


def data_domain(dataset: str | None) -> str | None:
    """A dataset's domain for the transfer test: a shipped sample is its dataset, CLEVR tasks are CLEVR."""
    if not dataset:
        return None
    name = re.sub(r"-sample$", "", str(dataset))
    return "clevr" if name.startswith("clevr") else name


def is_transfer(pretrain_dataset: str | None, dataset: str | None) -> bool | None:
    """True when the pretraining data differs from the task's data; None when the former is unknown."""
    a, b = data_domain(pretrain_dataset), data_domain(dataset)
    return None if a is None or b is None else a != b


def describe_data(data: dict[str, Any] | None) -> str:
    """``{"train": {"split": "train", "n": 3000}, ...}`` -> ``train: train (3,000) · test: test (1,000)``."""
    if not data:
        return ""
    return " · ".join(f"{role}: {d.get('split')} ({int(d['n']):,})" if d.get("n") is not None
                      else f"{role}: {d.get('split')}" for role, d in data.items())


def transfer_label(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "unknown"
    return "transfer" if value else "in-domain"


def data_table(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per task column of the results table: task, dataset, splits with image counts, and the
    rows for which it is a transfer or in-domain."""
    rows = []
    for column, part in agg.groupby("column", sort=False):
        by_kind: dict[str, list[str]] = {}
        for model, kind in zip(part["model"], part["transfer"]):
            by_kind.setdefault(transfer_label(kind), []).append(str(model))
        rows.append({"task column": column, "task": part["task"].iloc[0], "dataset": part["dataset"].iloc[0],
                     "splits (images)": " | ".join(dict.fromkeys(str(d) for d in part["data"] if d)) or "—",
                     **{k: ", ".join(by_kind.get(k, [])) or "—" for k in ("in-domain", "transfer", "unknown")}})
    return pd.DataFrame(rows).set_index("task column") if rows else pd.DataFrame()
