"""The report names its data: dataset, splits and image counts per column, transfer vs in-domain rows;
the shipped Fashion-MNIST sample is the documented subset of the real dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jepa_eval.assets import demo_checkpoint_path
from jepa_eval.cli import main as cli
from jepa_eval.datasets import get_dataset
from jepa_eval.datasets.builtin import fashion_mnist, fashion_mnist_available
from jepa_eval.datasets.sample import SAMPLE_SIZES, fashion_mnist_sample, sample_indices
from jepa_eval.report.data import is_transfer

BATTERY = """
tasks:
  - task: knn
    id: knn-sample
    dataset: fashion-mnist-sample
    max_samples: {train: 200, test: 100}
    params: {ks: [10]}
  - task: knn
    id: knn-digits
    dataset: digits
    max_samples: {train: 150, test: 60}
    params: {ks: [10]}
"""


def test_sample_is_balanced_and_loads_without_system_data():
    for split, n in SAMPLE_SIZES.items():
        ds = fashion_mnist_sample(split=split)
        assert len(ds) == n and ds.images.shape == (n, 28, 28)
        assert np.all(np.bincount(ds.targets, minlength=10) == n // 10)
    assert get_dataset("fashion-mnist-sample", split="test", image_size=28)[0][0].shape == (3, 28, 28)


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_sample_equals_the_seeded_subset_of_the_real_dataset():
    for split in SAMPLE_SIZES:
        full, sample = fashion_mnist(split=split), fashion_mnist_sample(split=split)
        idx = sample_indices(full, split)
        assert np.array_equal(full.images[idx], sample.images)
        assert np.array_equal(full.targets[idx], sample.targets)


def test_transfer_rule():
    assert is_transfer("fashion-mnist", "fashion-mnist-sample") is False
    assert is_transfer("fashion-mnist", "digits") is True
    assert is_transfer("clevr-count", "clevr-dist") is False
    assert is_transfer(None, "digits") is None


def test_report_shows_datasets_counts_and_transfers(tmp_path):
    battery = tmp_path / "b.yaml"
    battery.write_text(BATTERY)
    out, rep = tmp_path / "res", tmp_path / "rep"
    assert cli(["run", "--checkpoint", str(demo_checkpoint_path()), "--battery", str(battery), "--out", str(out),
                "--cache", str(tmp_path / "cache")]) == 0
    assert cli(["report", "--results", str(out), "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    data = md.split("## Data")[1].split("##")[0]
    sample_row = next(line for line in data.splitlines() if line.startswith("| knn-sample"))
    digits_row = next(line for line in data.splitlines() if line.startswith("| knn-digits"))
    assert "train: train (200) · test: test (100)" in sample_row and "fashion-mnist-sample" in sample_row
    assert "train: train (150) · test: test (60)" in digits_row
    # the demo checkpoint was pretrained on Fashion-MNIST: in-domain on the sample, a transfer on digits
    cells = [c.strip() for c in sample_row.strip("|").split("|")]
    assert cells[4] == "demo/jepa-latest [target]" and cells[5] == "—"
    cells = [c.strip() for c in digits_row.strip("|").split("|")]
    assert cells[4] == "—" and cells[5] == "demo/jepa-latest [target]"
    csv = pd.read_csv(rep / "results.csv")
    measured = csv[csv["source"] == "measured"].set_index("entry")
    assert measured.loc["knn-digits", "transfer"] in (True, "True")
    assert measured.loc["knn-sample", "data"] == "train: train (200) · test: test (100)"
    assert "knn-digits" in (rep / "report.html").read_text()
