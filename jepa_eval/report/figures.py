"""Report figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

Each builder returns ``ReportFigure``s holding PNG bytes, so the HTML can embed them and the
Markdown can link the same files. Figures of one task's details are drawn by the task (``Task.figures``,
with the helpers ``grid``, ``png`` and ``short`` here): this module names no task."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass
class ReportFigure:
    name: str       # file stem under figures/
    title: str
    caption: str
    png: bytes


def grid(n: int, width: float = 4.8, height: float = 3.2, ncols: int = 3) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def bars(agg: pd.DataFrame) -> list[ReportFigure]:
    """One panel per task column: the primary metric of each checkpoint/encoder, std as error bars."""
    if agg.empty:
        return []
    from .tables import order_models
    columns = list(dict.fromkeys(agg["column"]))
    rank = {m: i for i, m in enumerate(order_models(agg))}  # the same row order as the table
    fig, axes = grid(len(columns), height=max(2.4, 0.32 * agg["model"].nunique() + 1.2))
    for ax, col in zip(axes, columns):
        sub = agg[agg["column"] == col].sort_values("model", key=lambda s: s.map(rank))
        y = np.arange(len(sub))
        ax.barh(y, sub["mean"], xerr=sub["std"].fillna(0), color="#4C72B0", capsize=3, height=0.6)
        ax.set_ylim(len(sub) - 0.5, -0.5) if len(sub) > 1 else ax.set_ylim(-1, 1)
        ax.set_yticks(y, [short(m) for m in sub["model"]], fontsize=8)
        ax.set_title(col, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for yi, m in zip(y, sub["mean"]):
            ax.text(m, yi, f" {m:.1f}", va="center", fontsize=7)
    return [ReportFigure("bars", "Primary metric per task",
                         "Mean over repeats; error bars are the sample standard deviation where n > 1.",
                         png(fig))]


def by_epoch(agg: pd.DataFrame) -> list[ReportFigure]:
    """Primary metric against pretraining epoch for checkpoints of a run folder (jepa-ep{N})."""
    runs = agg[agg["checkpoint"].astype(str).str.contains(r"/jepa-(?:ep\d+|latest)(?: .*)?$", regex=True)]
    runs = runs[pd.to_numeric(runs["epoch"], errors="coerce").notna()]
    if runs.empty or runs["epoch"].nunique() < 2:
        return []
    runs = runs.assign(run=runs["checkpoint"].str.replace(r"/jepa-(ep\d+|latest)( .*)?$", "", regex=True),
                       epoch=pd.to_numeric(runs["epoch"]))
    # a curve needs two epochs of one run: drop tasks that were evaluated at a single epoch only
    span = runs.groupby(["column", "run", "encoder"])["epoch"].nunique()
    columns = [c for c in dict.fromkeys(runs["column"]) if span.loc[c].max() > 1]
    if not columns:
        return []
    fig, axes = grid(len(columns))
    for ax, col in zip(axes, columns):
        sub = runs[runs["column"] == col]
        for (run, enc), line in sub.groupby(["run", "encoder"], sort=False):
            # jepa-latest may repeat the last numbered epoch: one point per epoch
            line = line.sort_values("epoch").drop_duplicates("epoch", keep="first")
            ax.errorbar(line["epoch"], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3,
                        label=f"{run} [{enc}]")
        ax.set_xlabel("pretraining epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(col, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [ReportFigure("by_epoch", "Accuracy against pretraining epoch",
                         "Each point is one checkpoint of a pretraining run folder (jepa-ep{N}).", png(fig))]


# train-log.csv columns drawn against step, in panel order (pretrain/monitors.py defines the monitors)
TRAINING_CURVES = {"loss": "JEPA loss (smooth L1)", "rankme": "RankMe of pooled target features",
                   "feat_std": "std of pooled target features", "input_dep": "input dependence of target tokens",
                   "pred_std_ratio": "predictor std / target std", "knn": "online k-NN top-1 (%)"}


def read_training_log(run_dir: Path) -> pd.DataFrame:
    """A pretraining run folder's train-log.csv (``jepa-eval pretrain``), checked."""
    from ..errors import UserError
    path = Path(run_dir) / "train-log.csv"
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no train-log.csv there (not a `jepa-eval pretrain` run folder)")
    try:
        log = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"--run {run_dir}: unreadable train-log.csv ({str(e).splitlines()[0]})") from None
    if not {"step", "loss"} <= set(log.columns) or log["loss"].dropna().empty:
        raise UserError(f"--run {run_dir}: train-log.csv has no step/loss rows")
    return log


def curve_columns(runs: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """The train-log columns that hold values in at least one run, in panel order."""
    return [c for c in TRAINING_CURVES if any(c in log and log[c].notna().any() for _, log in runs)]


def training_curves(runs: list[tuple[str, pd.DataFrame]]) -> list[ReportFigure]:
    """Loss and every monitor against step, one panel per column, one line per run."""
    columns = curve_columns(runs)
    if not columns:
        return []
    fig, axes = grid(len(columns))
    for ax, col in zip(axes, columns):
        for name, log in runs:
            if col not in log:
                continue
            line = log[["step", col]].dropna()
            if col == "loss" and len(line) > 200:  # every step is logged: a running mean reads better
                ax.plot(line["step"], line[col], color="0.8", linewidth=0.5)
                line = line.assign(**{col: line[col].rolling(max(len(line) // 100, 2), min_periods=1).mean()})
            ax.plot(line["step"], line[col], marker="o" if len(line) < 40 else None, markersize=3,
                    label=short(name, 30))
        ax.set_xlabel("training step")
        ax.set_title(TRAINING_CURVES[col], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    monitored = [c for c in columns if c != "loss"]
    caption = ("From each run's train-log.csv. " + (
        "Monitors are measured every monitor.every steps on a fixed held batch (pretrain/README.md): RankMe or "
        "input dependence falling toward 0 signals collapse." if monitored else
        "The run logged no monitors (train with --monitor-every N to add them)."))
    return [ReportFigure("training_curves", "Pretraining curves", caption, png(fig))]


def task_figures(records: list[dict[str, Any]]) -> list[ReportFigure]:
    """What each task draws from its own records (``Task.figures``), tasks by ``figure_rank`` then name;
    records of a task this version does not know are left out."""
    from ..task import TASKS
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("task") in TASKS:
            by_task.setdefault(r["task"], []).append(r)
    order = sorted(by_task, key=lambda name: (TASKS.get(name).figure_rank, name))
    return [fig for name in order for fig in TASKS.get(name).figures(by_task[name])]


def all_figures(agg: pd.DataFrame, records: list[dict[str, Any]]) -> list[ReportFigure]:
    return [*bars(agg), *by_epoch(agg), *task_figures(records)]
