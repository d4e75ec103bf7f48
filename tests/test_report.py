"""Reports: explicit aggregation of repeats, missing cells kept, published rows, files, and the HTML
checked in a real headless Chromium (installed with apt-get when missing)."""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jepa_eval.cli import main
from jepa_eval.report.tables import aggregate, load_published, pivot
from jepa_eval.results import load
from report_fixtures import make_record


@pytest.fixture()
def results(tmp_path):
    r = tmp_path / "results"
    for seed, v in enumerate([70.0, 72.0, 77.0]):  # three seeds: mean 73, sample std 3.606
        make_record(r, "ijepa-vitb", "linear-clevr-count", {"top1": v}, task="linear", dataset="clevr-count",
                    seed=seed, chosen={"lr": 0.01 * (seed + 1)}, selected_on="train-holdout",
                    splits={"train": "trainval", "test": "test"})   # the paper's CLEVR data
    make_record(r, "ijepa-vitb", "knn", {"top1_k20": 55.5, "top1_k10": 54.0})
    make_record(r, "run1/jepa-ep10", "knn", {"top1_k20": 40.0}, epoch=10)
    make_record(r, "run1/jepa-ep20", "knn", {"top1_k20": 45.0}, epoch=20)
    make_record(r, "run1/jepa-ep20", "knn", {"top1_k20": 44.0}, epoch=20, encoder="context")
    make_record(r, "run1/jepa-ep20", "layerwise", {"top1_last": 45.0}, task="layerwise", epoch=20,
                pooling="blocksPOOL", details={"blocks": [0, 1, 2], "top1": [30.0, 40.0, 45.0], "probe": "knn"})
    make_record(r, "run1/jepa-ep20", "cka", {"cka_first_last": 0.4}, task="cka", epoch=20, pooling="blocksPOOL",
                details={"layers": {"labels": ["block 0", "block 1", "block 2"],
                                    "matrix": [[1, .7, .4], [.7, 1, .8], [.4, .8, 1]]}})
    return r


def test_pivot_aggregates_repeats_and_keeps_missing_cells(results):
    agg = aggregate(load(results))
    numbers, text = pivot(agg, load_published())
    row, col = "ijepa-vitb [target]", "linear-clevr-count (top1)"
    cell = agg[(agg["model"] == row) & (agg["column"] == col)].iloc[0]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(73.0)  # the mean, not the max (77)
    assert cell["std"] == pytest.approx(pd.Series([70.0, 72.0, 77.0]).std())
    assert text.loc[row, col] == "73.00 ± 3.61 (n=3)"
    # every measured checkpoint/encoder and every task is present, absent pairs shown as —
    measured = ["ijepa-vitb [target]", "run1/jepa-ep10 [target]", "run1/jepa-ep20 [target]",
                "run1/jepa-ep20 [context]"]
    assert list(text.index[:4]) == measured
    assert set(text.columns) == {"knn (top1_k20)", col, "layerwise (top1_last)", "cka (cka_first_last)"}
    assert text.loc["run1/jepa-ep10 [target]", col] == "—"
    assert math.isnan(numbers.loc["run1/jepa-ep10 [target]", col])
    assert text.loc["run1/jepa-ep20 [context]", "knn (top1_k20)"] == "44.00"
    # single runs have no std
    assert text.loc["ijepa-vitb [target]", "knn (top1_k20)"] == "55.50"
    assert text.loc["run1/jepa-ep20 [target]", "cka (cka_first_last)"] == "0.400"  # 3 decimals below 10
    # the paper's CLEVR/Count numbers land under the matching column, marked published, and nowhere else
    pub = text.loc["I-JEPA ViT-H/14 (published)"]
    assert pub[col] == "86.70" and (pub.drop(col) == "—").all()
    assert "I-JEPA ViT-B/16 (published)" not in text.index  # it has no CLEVR number


def test_published_numbers_only_beside_the_same_protocol(tmp_path):
    """Frozen low-shot and fine-tuned 1 % results get their own columns, each beside the published numbers of
    its protocol; VTAB-1k CLEVR is never placed beside the paper's full-CLEVR numbers."""
    from jepa_eval.report.tables import protocol_table
    r = tmp_path / "results"
    for entry, task, dataset, train, v in [("in1k-1pct", "lowshot", "imagefolder", "train", 60.0),
                                           ("in1k-1pct-finetune", "finetune", "imagefolder", "train", 70.0),
                                           ("clevr-count", "linear", "clevr-count", "trainval", 80.0),
                                           ("clevr-count-vtab1k", "linear", "clevr-count", "train800val200", 50.0)]:
        make_record(r, "ijepa-vith14", entry, {"top1": v}, task=task, dataset=dataset, splits={"train": train},
                    protocol=f"protocol of {entry}", eval_transform="resize256-centercrop224-bicubic-imagenetnorm")
    published = load_published()
    agg = aggregate(load(r))
    numbers, _ = pivot(agg, published)
    frozen, tuned = numbers["in1k-1pct (top1)"], numbers["in1k-1pct-finetune (top1)"]
    assert frozen["MSN ViT-B/4 (published)"] == 75.7 and math.isnan(frozen["I-JEPA ViT-H/14 (published)"])
    assert tuned["I-JEPA ViT-H/14 (published)"] == 73.3 and math.isnan(tuned["MSN ViT-B/4 (published)"])
    assert numbers["clevr-count (top1)"]["I-JEPA ViT-H/14 (published)"] == 86.7
    assert numbers["clevr-count-vtab1k (top1)"].drop("ijepa-vith14 [target]").isna().all()
    table = protocol_table(agg, published)
    assert table.loc["clevr-count-vtab1k (top1)", "published column"] == "none (not comparable)"
    assert table.loc["in1k-1pct-finetune (top1)", "published column"] == "IN-1K 1% (fine-tuned)"
    assert table.loc["in1k-1pct (top1)", "published column"] == "IN-1K 1% (frozen)"
    assert table.loc["clevr-count (top1)", "protocol"] == "protocol of clevr-count"
    # a user's own entry named plainly 'clevr-count' but trained on VTAB-1k splits is not compared either
    make_record(r, "other", "clevr-count", {"top1": 40.0}, task="linear", dataset="clevr-count",
                splits={"train": "train800val200"})
    numbers, _ = pivot(aggregate(load(r / "records" / "other")), published)
    assert list(numbers.index) == ["other [target]"]
    # nor is a small CLEVR-format set on its 'train' split (the default battery's rendered scenes)
    make_record(r, "small", "clevr-count", {"top1": 30.0}, task="linear", dataset="clevr-count",
                splits={"train": "train", "test": "test"})
    numbers, _ = pivot(aggregate(load(r / "records" / "small")), published)
    assert list(numbers.index) == ["small [target]"]


def test_same_record_twice_counts_once(results):
    agg = aggregate(load([results, results]))
    assert int(agg.loc[agg["column"] == "knn (top1_k20)", "n"].max()) == 1
    assert int(agg["n"].max()) == 3


def test_same_name_different_weights_are_not_repeats(tmp_path):
    r = tmp_path / "r"
    # jepa-latest is rewritten every epoch: same display name, different files
    for epoch, v in ((5, 30.0), (6, 50.0)):
        make_record(r, "run1/jepa-latest", "knn", {"top1_k20": v}, epoch=epoch,
                    sha_seed=f"latest-{epoch}")
    agg = aggregate(load(r))
    assert sorted(agg["model"]) == ["run1/jepa-latest (ep 5) [target]", "run1/jepa-latest (ep 6) [target]"]
    assert list(agg["n"]) == [1, 1]


def test_report_command_writes_all_outputs(results, tmp_path, capsys):
    out = tmp_path / "reports" / "t"
    assert main(["report", "--results", str(results), "--out", str(out), "--title", "T"]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md.startswith("# T") and "73.00 ± 3.61 (n=3)" in md and "| — |" in md
    assert "(published)" in md and "fine-tuned" in md.lower()
    # repeats chose differently: every distinct choice is listed ("|" escaped inside a Markdown table)
    assert "linear-clevr-count: lr=0.01 (selected on train-holdout) \\| lr=0.02" in md
    meta_row = next(line for line in md.splitlines() if line.startswith("| ijepa-vitb | target |"))
    assert meta_row.rstrip(" |").endswith("4.0")  # eval time: 3 linear seeds + 1 knn, 1 s each
    for name in ("bars", "by_epoch", "layerwise", "cka"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{name}.png" in md
    csv = pd.read_csv(out / "results.csv")
    assert set(csv["source"]) == {"measured", "published"}
    row = csv[(csv["model"] == "ijepa-vitb [target]") & (csv["entry"] == "linear-clevr-count")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(73.0)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_epoch_figure_needs_a_run_with_two_epochs(tmp_path):
    r = tmp_path / "r"
    make_record(r, "modelA", "knn", {"top1_k20": 50.0})
    make_record(r, "modelB", "knn", {"top1_k20": 51.0}, encoder="context")
    assert main(["report", "--results", str(r), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "figures").iterdir()) == ["bars.png"]


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no result records" in capsys.readouterr().err


# --- the HTML in a real browser -----------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    from jepa_eval.report.browser import find_chromium
    exe = find_chromium()
    if exe is None and shutil.which("apt-get"):
        # CI runs as root on Debian: install the real browser rather than skip the check
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = ["apt-get", "install", "-y", "-qq", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)
        exe = find_chromium()
        assert exe, "apt-get installed chromium but no chromium binary is on PATH"
    if exe is None:
        pytest.skip("no chromium and no apt-get to install it")
    return exe


def test_html_renders_in_chromium(results, tmp_path, chromium):
    from jepa_eval.report import build_report
    from jepa_eval.report.browser import check_page
    paths = build_report([results], tmp_path / "rep", title="Browser check")
    shot = tmp_path / "screenshot.png"
    page = check_page(paths.html, screenshot=shot, chromium=chromium)
    assert page.title == "Browser check"
    assert page.errors == [] and page.requests == []  # no console errors, nothing fetched from outside
    # results, data, protocols, published (8 benchmarks), checkpoints
    assert [t["cols"] for t in page.tables] == [5, 7, 6, 9, 9]
    assert page.tables[0]["rows"] == 4 + 7 and all(t["height"] > 50 for t in page.tables)
    assert page.tables[0]["missing"] > 0
    assert len(page.images) == 4
    for img in page.images:  # decoded and laid out, not a broken-image icon
        assert img["inline"] and img["complete"] and min(img["natural"]) > 100 and min(img["shown"]) > 100
    assert "73.00 ± 3.61 (n=3)" in page.text and "—" in page.text
    from PIL import Image
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 1500  # the full page, tables and figures
        assert len(np.unique(np.asarray(im.convert("L").resize((64, 256))))) > 10  # not a blank page


def test_browser_check_catches_broken_pages(tmp_path, chromium):
    from jepa_eval.report.browser import check_page
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body><table><tbody></tbody></table>"
                   '<img alt="x" src="data:image/png;base64,AAAA">'
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    page = check_page(bad, chromium=chromium)
    assert any("boom" in e for e in page.errors)
    assert any("undefinedFunction" in e for e in page.errors)
    assert page.images[0]["natural"] == [0, 0]


def test_report_check_flag_in_a_fresh_process(results, tmp_path, chromium):
    """`report --check` from a clean process (only fds 0-2 open: the DevTools pipe must still work)."""
    import os
    import sys
    out = tmp_path / "rep"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo, "PATH": os.path.dirname(chromium) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run([sys.executable, "-m", "jepa_eval", "report", "--results", str(results), "--out", str(out),
                           "--check"], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "no console errors" in proc.stdout
    assert (out / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
