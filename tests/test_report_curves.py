"""`jepa-eval report --run RUN_DIR`: a pretraining run's loss and monitor curves beside the probe results."""
from __future__ import annotations

import csv

import pytest

from jepa_eval.cli import main
from jepa_eval.report.figures import curve_columns, read_training_log
from pretrain.train import LOG_COLUMNS
from report_fixtures import make_record


def _run_folder(path, steps: int = 30, every: int = 10, knn: bool = True):
    """A train-log.csv as `jepa-eval pretrain` writes it: a step-0 monitor row, then one row per step."""
    path.mkdir(parents=True)
    with open(path / "train-log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS if every else LOG_COLUMNS[:9])
        w.writeheader()
        for step in range(0 if every else 1, steps + 1):
            row = {} if step == 0 else dict(epoch=step // 10, step=step, loss=0.4 - 0.005 * step, ctx_keep=15,
                                            tgt_keep=9, lr=1e-3, wd=0.04, momentum=0.996, step_time=0.1)
            row.update(epoch=step // 10, step=step)
            if every and step % every == 0:
                row.update(rankme=5 + step / 10, feat_std=0.25, input_dep=0.75, pred_std_ratio=0.4,
                           **({"knn": 45 + step / 10} if knn else {}))
            w.writerow(row)
    return path


def test_report_draws_the_run_curves(tmp_path, capsys):
    results = tmp_path / "results"
    make_record(results, "run/jepa-latest", "knn", {"top1_k20": 48.0})
    run = _run_folder(tmp_path / "run")
    out = tmp_path / "rep"
    assert main(["report", "--results", str(results), "--run", str(run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "figures/training_curves.png" in md and "Pretraining runs: run (30 steps, final loss 0.2500)" in md
    assert (out / "figures" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2  # bars + curves
    log = read_training_log(run)
    assert log["rankme"].notna().sum() == 4 and log["loss"].isna().sum() == 1  # step-0 row: monitors only
    assert curve_columns([("run", log)]) == ["loss", "rankme", "feat_std", "input_dep", "pred_std_ratio", "knn"]


def test_runs_without_monitors_or_knn_draw_what_they_have(tmp_path):
    old = read_training_log(_run_folder(tmp_path / "old", every=0))
    plain = read_training_log(_run_folder(tmp_path / "plain", knn=False))
    assert curve_columns([("old", old)]) == ["loss"]
    assert curve_columns([("old", old), ("plain", plain)]) == ["loss", "rankme", "feat_std", "input_dep",
                                                               "pred_std_ratio"]


@pytest.mark.parametrize("content,message", [(None, "no train-log.csv there"),
                                             ("a,b\n1,2\n", "no step/loss rows"),
                                             ("", "unreadable train-log.csv")])
def test_bad_run_folder_is_one_line(tmp_path, capsys, content, message):
    results = tmp_path / "results"
    make_record(results, "m", "knn", {"top1_k20": 48.0})
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "train-log.csv").write_text(content)
    assert main(["report", "--results", str(results), "--run", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "report.md").exists()
