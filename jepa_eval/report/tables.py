"""Tables of a report: the checkpoint x task pivot (explicit aggregation), published reference rows,
and per-checkpoint metadata. Missing cells stay in every table as NaN (shown as "—")."""
from __future__ import annotations

import math
import re
from importlib import resources
from typing import Any

import pandas as pd
import yaml

MISSING = "—"
PROTOCOL_FIELDS = ("protocol", "train_split", "eval_transform")   # what a column's protocol is made of


def model_label(checkpoint: str, encoder: str) -> str:
    return f"{checkpoint} [{encoder}]"


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Primary metric per (checkpoint, encoder, entry): mean, sample std and n over repeats.

    Repeats are records of the same checkpoint/encoder/entry that differ in configuration (e.g. the
    seed); the same record found twice (same record_id, e.g. a folder given twice) counts once."""
    prim = df[df["primary"]].drop_duplicates("record_id")
    cols = ["model", "checkpoint", "encoder", "epoch", "entry", "task", "dataset", "data", "pretrain_dataset",
            "transfer", "metric", "column", "mean", "std", "n", "source"]
    if prim.empty:
        return pd.DataFrame(columns=cols + list(PROTOCOL_FIELDS))
    prim = prim.assign(checkpoint=_distinct_names(prim), column=prim["entry"] + " (" + prim["metric"] + ")",
                       value=pd.to_numeric(prim["value"], errors="coerce"))
    prim = prim.assign(model=[model_label(c, e) for c, e in zip(prim["checkpoint"], prim["encoder"])])
    keys = ["model", "checkpoint", "sha256", "encoder", "entry", "metric", "column"]
    agg = (prim.groupby(keys, sort=False, dropna=False)
           .agg(mean=("value", "mean"), std=("value", "std"), n=("value", "size"),
                epoch=("epoch", "first"), task=("task", "first"), data=("data", "first"),
                pretrain_dataset=("pretrain_dataset", "first"), transfer=("transfer", "first"),
                dataset=("dataset", lambda s: ",".join(sorted({str(v) for v in s}))),
                **{c: (c, _distinct) for c in PROTOCOL_FIELDS})
           .reset_index())
    agg["std"] = agg["std"].where(agg["n"] > 1)  # std of one value is undefined, not 0
    agg["source"] = "measured"
    return agg[cols + list(PROTOCOL_FIELDS)]



def _distinct(values: pd.Series) -> str:
    """The distinct non-empty values, in order, joined (records older than the field give "")."""
    return " | ".join(dict.fromkeys(str(v) for v in values if v is not None and not pd.isna(v)))


def _distinct_names(prim: pd.DataFrame) -> pd.Series:
    """Checkpoint names made unique per weights: records of different files that share a name
    (jepa-latest rewritten every epoch, two runs' best.pth) are different rows, never repeats."""
    per_name = prim.groupby("checkpoint").agg(shas=("sha256", "nunique"), epochs=("epoch", "nunique"))
    clash = set(per_name.index[per_name["shas"] > 1])
    by_epoch = set(per_name.index[per_name["shas"] == per_name["epochs"]])  # epochs tell them apart

    def name(c: str, sha: str, epoch) -> str:
        if c not in clash:
            return c
        return f"{c} (ep {int(epoch)})" if c in by_epoch and pd.notna(epoch) else f"{c} @{str(sha)[:8]}"
    names = [name(c, s, e) for c, s, e in zip(prim["checkpoint"], prim["sha256"], prim["epoch"])]
    return pd.Series(names, index=prim.index)


def order_models(agg: pd.DataFrame) -> list[str]:
    first = agg.drop_duplicates("model")
    epoch = pd.to_numeric(first["epoch"], errors="coerce").fillna(-1)
    run = first["checkpoint"].astype(str).str.replace(r"/jepa-(ep\d+|latest)( .*)?$", "", regex=True)
    latest = first["checkpoint"].astype(str).str.contains("/jepa-latest")
    enc = first["encoder"].map({"target": 0, "context": 1}).fillna(2)  # the paper's encoder first
    order = first.assign(_run=run, _latest=latest, _epoch=epoch, _enc=enc).sort_values(
        ["_run", "_latest", "_epoch", "_enc", "model"], kind="stable")
    return list(order["model"])


def format_cell(mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    digits = 2 if abs(mean) >= 10 else 3  # accuracies in percent vs CKA-like values in [0, 1]
    if n and n > 1:
        return f"{mean:.{digits}f} ± {std:.{digits}f} (n={int(n)})"
    return f"{mean:.{digits}f}"


def load_published() -> dict[str, Any]:
    text = (resources.files("jepa_eval.report") / "published.yaml").read_text()
    return yaml.safe_load(text)


def matches(column: dict[str, Any], bench: dict[str, Any]) -> bool:
    """Whether a measured column follows a published benchmark's protocol: ``match`` hits and ``exclude``
    (other protocols: fine-tuned vs frozen, VTAB-1k vs full CLEVR) does not, on "task entry dataset split"."""
    text = f"{column['task']} {column['entry']} {column['dataset']} {column.get('train_split') or ''}".strip()
    if not re.search(bench["match"], text, re.IGNORECASE):
        return False
    return not (bench.get("exclude") and re.search(bench["exclude"], text, re.IGNORECASE))


def published_rows(columns: list[dict[str, str]], published: dict[str, Any]) -> pd.DataFrame:
    """Published numbers placed under the measured columns that follow a benchmark's protocol."""
    rows = []
    for bench_id, bench in published["benchmarks"].items():
        hits = [c for c in columns if matches(c, bench)]
        for row in published["rows"]:
            if bench_id in row:
                for col in hits:
                    rows.append({"model": f"{row['model']} (published)", "column": col["column"],
                                 "mean": float(row[bench_id]), "std": float("nan"), "n": 1,
                                 "source": "published", "benchmark": bench["title"]})
    return pd.DataFrame(rows, columns=["model", "column", "mean", "std", "n", "source", "benchmark"])


def pivot(agg: pd.DataFrame, published: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, display): models x columns; every model and column kept, absent cells NaN / "—".
    Published rows (when a benchmark matches a column) are appended below the measured ones."""
    models, columns = order_models(agg), list(dict.fromkeys(agg["column"]))
    long = agg[["model", "column", "mean", "std", "n"]]
    if published is not None and columns:
        info = agg.drop_duplicates("column")[["column", "task", "entry", "dataset", "train_split"]].to_dict("records")
        pub = published_rows(info, published)
        models += list(dict.fromkeys(pub["model"]))
        long = pd.concat([long, pub[long.columns]], ignore_index=True) if not pub.empty else long
    index = pd.MultiIndex.from_product([models, columns], names=["model", "column"])
    full = long.set_index(["model", "column"]).reindex(index)  # the cartesian product: nothing dropped
    numbers = full["mean"].unstack("column").reindex(index=models, columns=columns)
    text = pd.Series([format_cell(m, s, n) for m, s, n in zip(full["mean"], full["std"], full["n"])],
                     index=index).unstack("column").reindex(index=models, columns=columns)
    return numbers, text


def published_table(published: dict[str, Any]) -> pd.DataFrame:
    """All published rows, benchmark titles as columns ("—" where the paper has no number)."""
    benches = published["benchmarks"]
    data = [{"model": r["model"], **{b["title"]: (f"{r[k]:.1f}" if k in r else MISSING)
                                     for k, b in benches.items()}} for r in published["rows"]]
    return pd.DataFrame(data).set_index("model")


def protocol_table(agg: pd.DataFrame, published: dict[str, Any]) -> pd.DataFrame:
    """One row per measured column: its task, training split, eval transform, the protocol its battery
    entry states, and the published benchmark it is compared with (none when no benchmark follows it)."""
    rows = []
    for col in agg.drop_duplicates("column").to_dict("records"):
        benches = [b["title"] for b in published["benchmarks"].values() if matches(col, b)]
        rows.append({"column": col["column"], "task": col["task"], "train split": col["train_split"] or MISSING,
                     "eval transform": col["eval_transform"] or MISSING,
                     "protocol": col["protocol"] or "(not stated by the battery entry)",
                     "published column": ", ".join(benches) or "none (not comparable)"})
    return pd.DataFrame(rows, columns=["column", "task", "train split", "eval transform", "protocol",
                                       "published column"]).set_index("column")


def _fmt_chosen(chosen: Any) -> str:
    if not chosen:
        return ""
    if isinstance(chosen, dict):
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
    return str(chosen)


def metadata_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per checkpoint and encoder: identity, format, poolings and chosen hyperparameters."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        ck = rec.get("checkpoint", {})
        meta = ck.get("meta", {})
        key = (str(ck.get("name")), str(ck.get("sha256")), str(rec.get("encoder")))
        row = rows.setdefault(key, {
            "checkpoint": key[0], "encoder": key[2], "sha256": str(ck.get("sha256") or "")[:16],
            "source format": meta.get("source_format", ""), "epoch": meta.get("epoch"),
            "architecture": _arch(meta), "poolings": set(), "eval time (s)": 0.0,
            "chosen": {}})  # entry -> distinct choices
        row["eval time (s)"] += float(rec.get("wall_time_s") or 0.0)
        row["poolings"].update(str(rec.get("pooling") or "").split(","))
        text = _fmt_chosen(rec.get("chosen"))
        if text:
            on = rec.get("selected_on") or "?"
            # repeats (seeds) may choose differently: keep every distinct choice, in order
            row["chosen"].setdefault(rec.get("entry"), {})[f"{text} (selected on {on})"] = None
    out = []
    for row in rows.values():
        row["poolings"] = ", ".join(sorted(p for p in row["poolings"] if p))
        row["chosen hyperparameters"] = "; ".join(
            f"{entry}: {' | '.join(choices)}" for entry, choices in row.pop("chosen").items()) or MISSING
        row["epoch"] = MISSING if row["epoch"] is None else row["epoch"]
        row["eval time (s)"] = f"{row['eval time (s)']:.1f}"
        out.append(row)
    cols = ["checkpoint", "encoder", "sha256", "source format", "epoch", "architecture", "poolings",
            "chosen hyperparameters", "eval time (s)"]
    return pd.DataFrame(out, columns=cols)


def _arch(meta: dict[str, Any]) -> str:
    if meta.get("width"):
        parts = [f"D={meta['width']}", f"depth={meta.get('depth')}", f"patch={meta.get('patch_size')}",
                 f"img={meta.get('img_size')}"]
        return (meta.get("name", "") + " " + " ".join(parts)).strip()
    return str(meta.get("name", ""))
