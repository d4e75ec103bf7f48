"""Results store: atomic records, loading into pandas, battery validation."""
from __future__ import annotations

import json

import pytest

from jepa_eval import UserError, results
from jepa_eval.battery import load_battery


def _record(name, task, value, encoder="target"):
    return {"schema": results.SCHEMA, "record_id": f"{name}-{task}", "checkpoint": {"name": name, "sha256": "ab",
            "meta": {"epoch": 3, "source_format": "ijepa-official"}}, "task": task, "entry": task,
            "dataset": "digits", "encoder": encoder, "pooling": "lastPOOL", "seed": 0,
            "primary_metric": "top1", "metrics": {"top1": value, "top5": 99.0}, "chosen": {"lr": 0.1},
            "selected_on": "train-holdout-10%"}


def test_write_error_mid_record_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "r" / "rec.json"
    results.write_record(path, _record("a", "knn", 50.0))
    before = path.read_text()

    def broken_dump(obj, f, **kw):
        f.write('{"schema": 1, "metr')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.json, "dump", broken_dump)
    with pytest.raises(OSError):
        results.write_record(path, _record("a", "knn", 60.0))
    assert path.read_text() == before  # the old record is intact
    assert [p.name for p in path.parent.iterdir()] == ["rec.json"]  # no temp file left behind
    with pytest.raises(OSError):
        results.write_record(tmp_path / "r" / "new.json", _record("b", "knn", 1.0))
    assert not (tmp_path / "r" / "new.json").exists()


def test_load_gives_one_row_per_metric_and_ignores_foreign_json(tmp_path):
    results.write_record(tmp_path / "a.json", _record("ck1", "knn", 50.0))
    results.write_record(tmp_path / "b.json", _record("ck2", "linear", 70.0, encoder="context"))
    (tmp_path / "c.json").write_text(json.dumps({"unrelated": True}))
    (tmp_path / "d.json").write_text("{broken")
    df = results.load(tmp_path)
    assert len(df) == 4 and set(df.checkpoint) == {"ck1", "ck2"}
    assert df[df.primary].set_index("checkpoint")["value"].to_dict() == {"ck1": 50.0, "ck2": 70.0}
    table = results.summary_table(df)
    assert table.shape == (2, 2) and (table == "—").sum().sum() == 2  # missing cells are kept, not dropped
    with pytest.raises(UserError, match="results folder not found"):
        results.load(tmp_path / "absent")


@pytest.mark.parametrize("yaml_text, expected", [
    ("tasks: []", "non-empty 'tasks' list"),
    ("tasks:\n  - dataset: digits", "mapping with a 'task' key"),
    ("tasks:\n  - task: knn", "needs a 'dataset'"),
    ("tasks:\n  - task: knn\n    dataset: digits\n    params: {k: [1]}", "unknown parameter 'k'.*did you mean 'ks'"),
    ("tasks:\n  - task: knn\n    dataset: digits\n    params: {temperature: -1.0}", "temperature must be positive"),
    ("tasks:\n  - task: knn\n    dataset: digits\n    pooling: maxPOOL", "unknown pooling"),
    ("tasks:\n  - task: knn\n    dataset: digits\n    max_samples: {train: 0}", "max_samples.train must be a positive integer"),
    ("tasks:\n  - task: knn\n    dataset: digits\n    sead: 1", "unknown key 'sead'"),
    ("tasks:\n  - {task: knn, dataset: digits}\n  - {task: knn, dataset: digits}", "share the id"),
])
def test_battery_validation(tmp_path, yaml_text, expected):
    path = tmp_path / "b.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match=expected):
        load_battery(str(path))


def test_shipped_smoke_battery_is_valid():
    battery = load_battery("smoke")
    assert [e.task for e in battery.entries] == ["knn"] and battery.entries[0].datasets == ["fashion-mnist-sample"]
