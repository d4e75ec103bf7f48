"""Environment variables are read by the command layer only: library calls ignore them, commands honour
them and pass plain values down (a cache folder, data roots, the planning commit)."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from _jobs import SPEC, write_battery
from jepa_eval.cli import main
from jepa_eval.datasets import get_dataset
from jepa_eval.errors import UserError
from jepa_eval.hashindex import default_cache_dir


def write_fashion(folder, n: int = 30) -> None:
    """A tiny Fashion-MNIST in the standard idx.gz layout."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def env(tmp_path, monkeypatch):
    write_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("JEPA_EVAL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("JEPA_EVAL_CACHE", str(tmp_path / "envcache"))
    return tmp_path


def test_library_calls_ignore_the_environment(env):
    assert default_cache_dir() != env / "envcache"
    try:
        ds = get_dataset("fashion-mnist", split="test")
    except UserError as e:        # no system copy here: the error never points at the variable's folder
        assert str(env / "data") not in str(e)
    else:                          # the system copy, never the 30 images the variable points at
        assert len(ds) != 30 and str(env / "data") not in ds.identity["root"]


def test_commands_read_the_cache_and_data_variables(env, capsys):
    assert main(["features", "--checkpoint", SPEC, "--dataset", "fashion-mnist", "--split", "test",
                 "--pooling", "lastPOOL"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("30 x ") and str(env / "envcache") in out   # $JEPA_EVAL_DATA's 30 images, cached there
    assert (env / "envcache" / "checkpoint-sha256.json").exists() or any((env / "envcache").iterdir())


FASHION_KNN = """  - task: knn
    id: knn-fm
    dataset: fashion-mnist
    params: {ks: [5]}
"""


def test_run_records_the_data_home_root_and_the_planning_commit(env, capsys, monkeypatch):
    import jepa_eval.runner as runner
    monkeypatch.setattr(runner, "git_commit", lambda: "c0ffee")   # what the planning process's checkout says
    battery = write_battery(env / "b.yaml", FASHION_KNN)
    assert main(["run", "--checkpoint", SPEC, "--battery", str(battery), "--out", str(env / "out"),
                 "--no-progress"]) == 0
    (rec,) = [json.loads(p.read_text()) for p in (env / "out" / "records").rglob("*.json")]
    assert rec["git_commit"] == "c0ffee"
    assert str(env / "data" / "fashion-mnist") in json.dumps(rec)
    # --root still wins over the data home
    other = env / "other"
    write_fashion(other, n=20)
    assert main(["run", "--checkpoint", SPEC, "--battery", str(battery), "--out", str(env / "out2"),
                 "--root", f"fashion-mnist={other}", "--no-progress"]) == 0
    (rec,) = [json.loads(p.read_text()) for p in (env / "out2" / "records").rglob("*.json")]
    assert str(other) in json.dumps(rec) and str(env / "data") not in json.dumps(rec)


def test_no_library_module_reads_the_environment():
    """Only the command layer and each process's entry point (SLURM's and torchrun's variables) may."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    allowed = {"jepa_eval/launchers/units.py",   # a submitted job's entry: the SLURM job id it ran under
               "pretrain/train.py"}              # the training entry: torchrun's RANK / WORLD_SIZE
    readers = []
    for path in [*(root / "jepa_eval").rglob("*.py"), *(root / "pretrain").rglob("*.py")]:
        rel = path.relative_to(root).as_posix()
        if rel.startswith("jepa_eval/commands/") or rel == "jepa_eval/demo.py" or rel in allowed:
            continue
        if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text()):
            readers.append(rel)
    assert readers == []
