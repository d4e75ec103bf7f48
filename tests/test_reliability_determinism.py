"""Determinism on CPU: the same checkpoint, battery and seed give the same numbers run to run."""
from __future__ import annotations

import json

import numpy as np

from _reliability import SPEC, cli_inprocess, knn_entry, records, write_battery


# linear reads the same features as knn-seed0 (same dataset, subset, seed and pooling); lowshot reads the
# test features too, but encodes only its k-per-class subsets' training images (an entry of their own)
LINEAR = """task: linear
id: linear
dataset: digits
max_samples: {train: 200, test: 100}
pooling: lastPOOL
params: {lrs: [0.01, 0.1], wds: [0.0], norms: [none, bn], epochs: 3, batch_size: 32}"""
LOWSHOT = """task: lowshot
id: lowshot
dataset: digits
max_samples: {train: 200, test: 100}
params: {k_per_class: 6, seeds: 3, lambdas: [0.1, 0.01], max_iter: 30}"""


def run_fresh(tmp_path, capsys, battery, name):
    """One run with its own output folder and its own (empty) feature cache: everything is recomputed."""
    out, cache = tmp_path / name, tmp_path / f"{name}-cache"
    code, _, err = cli_inprocess(capsys, ["run", "--checkpoint", SPEC, "--battery", battery, "--out", out,
                                          "--cache", cache, "--no-progress"])
    assert code == 0, err
    recs = {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in records(out)}
    feats = {p.parent.name: np.load(p) for p in cache.glob("*/features.npy")}
    return recs, feats


def test_same_seed_same_numbers(tmp_path, capsys):
    seeded = [knn_entry(entry_id=f"knn-seed{s}", train=200, test=100, extra=f"seed: {s}") for s in (0, 1)]
    battery = write_battery(tmp_path / "b.yaml", *seeded, LINEAR, LOWSHOT)
    first, feats1 = run_fresh(tmp_path, capsys, battery, "a")
    second, feats2 = run_fresh(tmp_path, capsys, battery, "b")
    assert first.keys() == second.keys() == {"knn-seed0", "knn-seed1", "linear", "lowshot"}
    for entry in first:
        for key in ("metrics", "chosen", "record_id", "threads"):
            assert first[entry][key] == second[entry][key], (entry, key)
        # the thread counts are recorded: a reduction's order (hence the last digits) can follow them
        assert first[entry]["threads"]["torch"] >= 1 and "faiss" in first[entry]["threads"]
    assert first["linear"]["details"]["grid"] == second["linear"]["details"]["grid"]
    assert first["lowshot"]["details"]["per_seed"] == second["lowshot"]["details"]["per_seed"]
    # (train, test) x two seeded subsets, plus lowshot's subset rows of the seed-0 train split
    assert feats1.keys() == feats2.keys() and len(feats1) == 5
    for key in feats1:
        assert np.array_equal(feats1[key], feats2[key]), key
    # the seed is not ignored: it draws another subset, hence other features
    assert len({f.tobytes() for f in feats1.values()}) == 5
