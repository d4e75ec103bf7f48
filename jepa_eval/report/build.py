"""Build a report folder from one or more results folders: report.md, report.html, results.csv,
records.csv and figures/*.png."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..atomic import atomic_write_bytes, remove_stale_temp_files
from ..errors import UserError, write_error
from ..results import iter_records, load, now
from . import figures as figs
from .render import Section, to_html, to_markdown
from .data import data_table
from .tables import aggregate, load_published, metadata_table, pivot, protocol_table, published_table


@dataclass
class ReportPaths:
    out: Path
    markdown: Path
    html: Path
    csv: Path
    figures: list[Path]


def _write(path: Path, data: str | bytes) -> None:
    try:  # atomic: a browser refreshing the report never sees half a file
        atomic_write_bytes(path, data if isinstance(data, bytes) else data.encode("utf-8"))
    except OSError as e:  # disk full, quota: the previous report file stays whole
        raise write_error(path, e, "the report file", "the previous report is kept; rerun to rewrite it") from None


def build_report(results: Iterable[str | os.PathLike], out: str | os.PathLike,
                 title: str = "jepa-eval report",
                 extra_figures: Iterable[tuple[str | os.PathLike, str]] = (),
                 runs: Iterable[str | os.PathLike] = ()) -> ReportPaths:
    """``extra_figures``: (PNG path, caption) pairs embedded after the generated figures, e.g. the
    predictor visualization of `jepa-eval decoder visualize`. ``runs``: pretraining run folders
    (``jepa-eval pretrain --out``) whose train-log.csv curves are drawn beside the probe results."""
    dirs = [Path(d) for d in results]
    run_logs = [(Path(r).resolve().name, figs.read_training_log(Path(r))) for r in runs]  # checked first
    df = load(dirs)
    records = [rec for _, rec in iter_records(dirs)]
    if df.empty:
        raise UserError(f"no result records under {', '.join(map(str, dirs))}; run `jepa-eval run` first")
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out, out / "figures"])
    published = load_published()
    agg = aggregate(df)
    _, display = pivot(agg, published)
    display.index.name = "checkpoint [encoder]"
    pub = published_table(published)
    meta = metadata_table(records).set_index("checkpoint")
    fig_list = figs.all_figures(agg, records) + figs.training_curves(run_logs)
    for path, caption in extra_figures:
        path = Path(path)
        if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            raise UserError(f"--figure {path}: not a PNG file")
        fig_list.append(figs.ReportFigure(name=path.stem, title=caption or path.stem, caption=caption,
                                          png=path.read_bytes()))

    n_missing = int((display.loc[list(dict.fromkeys(agg["model"]))] == "—").sum().sum())
    repeats = int((agg["n"] > 1).sum())
    intro = [f"{len(records)} records from {', '.join(str(d) for d in dirs)}; generated {now()}.",
             f"{agg['model'].nunique()} checkpoint/encoder rows x {agg['column'].nunique()} tasks; "
             f"{n_missing} cells without a result are shown as —; {repeats} cells aggregate repeats."]
    if run_logs:
        intro.append("Pretraining runs: " + "; ".join(
            f"{name} ({int(log['step'].max())} steps, final loss {log['loss'].dropna().iloc[-1]:.4f})"
            for name, log in run_logs) + " — curves under Figures.")
    sections = [
        Section("Results", display, text=[
            "Primary metric of each task (percent for accuracies). Repeated runs of one checkpoint, encoder "
            "and task (other seeds or settings) are shown as mean ± sample std (n = count); nothing is "
            "maximised over repeats. Rows marked (published) are numbers from the paper placed under a "
            "task that follows the same protocol (see Protocols)."]),
        Section("Data", data_table(agg), text=[
            "What each task column read: dataset, splits (role: split (images used)), and for which rows it "
            "is in-domain or a transfer (the checkpoint was pretrained on other data, as its config says; "
            "unknown where a checkpoint does not say)."]),
        Section("Protocols", protocol_table(agg, published), text=[
            "The protocol behind each column. Published numbers are placed only under a column that follows "
            "the same protocol: frozen and fine-tuned results never share a column, and VTAB-1k CLEVR "
            "(1,000 training images) is never compared with the paper's full-CLEVR numbers."]),
        Section("Published reference numbers", pub, text=[f"From {published['source']}."],
                bullets=[f"{b['title']}: {b['protocol']}" for b in published["benchmarks"].values()]
                + list(published.get("notes", []))),
        Section("Checkpoints", meta, text=[
            "Identity and settings of every evaluated checkpoint and encoder; hyperparameters a task "
            "selected are listed with the split they were selected on."]),
    ]
    md = to_markdown(title, intro, sections, fig_list)
    page = to_html(title, intro, sections, fig_list)

    fig_paths = []
    for f in fig_list:
        path = out / "figures" / f"{f.name}.png"
        _write(path, f.png)
        fig_paths.append(path)
    pub_long = _published_long(published)
    csv = pd.concat([agg, pub_long], ignore_index=True)
    paths = ReportPaths(out, out / "report.md", out / "report.html", out / "results.csv", fig_paths)
    _write(paths.csv, csv.to_csv(index=False))
    _write(out / "records.csv", df.drop(columns=["chosen"]).assign(
        chosen=[str(c) if c else "" for c in df["chosen"]]).to_csv(index=False))
    _write(paths.markdown, md)
    _write(paths.html, page)
    return paths


def _published_long(published: dict) -> pd.DataFrame:
    rows = [{"model": f"{r['model']} (published)", "checkpoint": r["model"], "entry": bench_id,
             "column": b["title"], "mean": float(r[bench_id]), "n": 1, "source": "published"}
            for r in published["rows"] for bench_id, b in published["benchmarks"].items() if bench_id in r]
    return pd.DataFrame(rows)
