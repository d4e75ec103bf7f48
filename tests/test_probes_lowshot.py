"""Low-shot logistic regression: accuracy, chance on noise, agreement with scikit-learn, CV-only
selection, subsets (k per class and SimCLR files), validation, one end-to-end run on digits."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_eval.datasets import get_dataset
from jepa_eval.errors import UserError
from jepa_eval.probes.lowshot import (fit_logreg_path, k_per_class_subset, l2_normalize, lowshot_eval,
                                      subset_from_file)
from jepa_eval.task import TASKS, build_params


pytestmark = pytest.mark.usefixtures("one_thread")

LAMBDAS = [1e-1, 1e-2, 1e-3, 1e-4]


def blobs(n, classes=6, dim=20, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(5).normal(size=(classes, dim))
    y = np.arange(n) % classes
    return (centers[y] + spread * rng.normal(size=(n, dim))).astype(np.float16), y


def test_separable_reaches_100_with_mean_and_std():
    x, y = blobs(600)
    tx, ty = blobs(300, seed=1)
    res = lowshot_eval(x, y, tx, ty, [k_per_class_subset(y, 12, s) for s in range(3)], LAMBDAS)
    assert res.top1_mean == 100.0 and res.top1_std == 0.0 and len(res.per_seed) == 3
    assert all(p["n_labelled"] == 72 for p in res.per_seed)


def test_noise_labels_stay_at_chance():
    rng = np.random.default_rng(0)
    x, tx = rng.normal(size=(600, 20)), rng.normal(size=(3000, 20))
    y = np.arange(600) % 6
    res = lowshot_eval(x, y, tx, rng.integers(0, 6, 3000), [k_per_class_subset(y, 20, s) for s in range(3)], LAMBDAS)
    assert 12.0 < res.top1_mean < 22.0


def test_batched_path_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    x, y = blobs(120, spread=2.0)
    z = l2_normalize(x)
    masks = torch.ones(1, 2, 120)
    masks[0, 1, :60] = 0                                   # a second problem on half the rows
    w, b = fit_logreg_path(torch.from_numpy(z)[None], torch.from_numpy(y)[None], masks, [1e-2], 6,
                           max_iter=500, tol=1e-9)
    for p, rows in enumerate([slice(0, 120), slice(60, 120)]):
        n = len(y[rows])
        ref = LogisticRegression(C=1 / (1e-2 * n), tol=1e-10, max_iter=5000).fit(z[rows], y[rows])
        ours = torch.softmax(torch.from_numpy(z) @ w[0, p] + b[0, p], -1).numpy()
        np.testing.assert_allclose(ours, ref.predict_proba(z), atol=2e-3)


def test_selection_uses_only_cross_validation():
    x, y = blobs(600, spread=3.0)
    tx, ty = blobs(300, seed=1, spread=3.0)
    subsets = [k_per_class_subset(y, 12, s) for s in range(3)]
    a = lowshot_eval(x, y, tx, ty, subsets, LAMBDAS)
    b = lowshot_eval(x, y, tx, np.random.default_rng(0).permutation(ty), subsets, LAMBDAS)
    assert [p["lambda"] for p in a.per_seed] == [p["lambda"] for p in b.per_seed] and a.cv_grid == b.cv_grid
    assert a.top1_mean != b.top1_mean


def test_k_per_class_subsets_are_seeded():
    y = np.repeat(np.arange(4), 30)
    a, b = k_per_class_subset(y, 12, 0), k_per_class_subset(y, 12, 1)
    assert np.bincount(y[a]).tolist() == [12] * 4 and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, k_per_class_subset(y, 12, 0))


def test_inputs_are_not_modified():
    x, y = blobs(200)
    x32 = x.astype(np.float32)
    before = x32.copy()
    lowshot_eval(x32, y, x32, y, [k_per_class_subset(y, 6, 0)], [1e-2])
    np.testing.assert_array_equal(x32, before)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        for i in range(5):
            (tmp_path / "train" / cls).mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
            image.save(tmp_path / "train" / cls / f"{cls}_{i}.png")
    return tmp_path


def test_subset_file_simclr_format(folder, tmp_path):
    ds = get_dataset("imagefolder", str(folder), "train", image_size=8)
    sub = tmp_path / "sub.txt"
    sub.write_text("n01_3.png\nn02_0.png\n\nn02_4.png\n")
    rows = subset_from_file(sub, ds.file_names(), ds.classes, ds.targets)
    assert [ds.file_names()[r] for r in rows] == ["n01_3.png", "n02_0.png", "n02_4.png"]
    limited = get_dataset("imagefolder", str(folder), "train", image_size=8, max_samples=4)
    assert set(limited.file_names()) <= set(ds.file_names()) and len(limited.file_names()) == 4
    sub.write_text("n01_3.png\nn01_9.png\n")
    with pytest.raises(UserError, match="not in the training split"):
        subset_from_file(sub, ds.file_names(), ds.classes, ds.targets)
    (folder / "train" / "n02" / "n01_7.png").write_bytes((folder / "train" / "n02" / "n02_0.png").read_bytes())
    ds = get_dataset("imagefolder", str(folder), "train", image_size=8)
    sub.write_text("n01_7.png\n")
    with pytest.raises(UserError, match="filed under class"):
        subset_from_file(sub, ds.file_names(), ds.classes, ds.targets)
    with pytest.raises(UserError):
        subset_from_file(sub, get_dataset("digits", split="train").file_names(), ds.classes, ds.targets)


@pytest.mark.parametrize("params", [{"seeds": 1}, {"k_per_class": 0}, {"lambdas": [0.0]}, {"n_folds": 1},
                                    {"k_per_class": 2}, {"lambdas": []}, {"subset_files": "a.txt"}])
def test_bad_params_raise_user_error(params):
    with pytest.raises(UserError):
        build_params(TASKS.get("lowshot"), params, "test")


def test_end_to_end_on_digits(tmp_path):
    from jepa_eval import runner
    battery = tmp_path / "b.yaml"
    battery.write_text("tasks:\n  - {task: lowshot, dataset: digits, params: {k_per_class: 12, seeds: 3}}\n")
    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
    (path,) = runner.run_in_process(runner.plan([spec], str(battery), tmp_path / "out", tmp_path / "cache"),
                                    progress=False)
    rec = json.loads(path.read_text())
    assert rec["selected_on"] == "cv-in-subset-3fold" and list(rec["metrics"]) == ["top1", "top1_std"]
    assert len(rec["details"]["per_seed"]) == 3 and rec["metrics"]["top1"] > 40.0
    assert rec["details"]["torch_threads"] == 1          # recorded (a problem this small always gets one)


def test_thread_count_rule_and_restore(monkeypatch):
    from jepa_eval.probes import lowshot as lowshot_mod
    from jepa_eval.probes.lowshot import ONE_THREAD_BELOW, lowshot_threads
    assert lowshot_threads(ONE_THREAD_BELOW - 1, current=8) == 1
    assert lowshot_threads(ONE_THREAD_BELOW, current=8) == 8
    x, y = blobs(240)
    tx, ty = blobs(60, seed=1)
    subsets = [k_per_class_subset(y, 12, s) for s in range(3)]
    seen = []
    real = lowshot_mod.fit_logreg_path
    monkeypatch.setattr(lowshot_mod, "fit_logreg_path",
                        lambda *a, **kw: seen.append(torch.get_num_threads()) or real(*a, **kw))
    before = torch.get_num_threads()                           # 1, from the module's one_thread fixture
    torch.set_num_threads(2)
    try:
        res = lowshot_eval(x, y, tx, ty, subsets, LAMBDAS)       # 3 x 4 x 72 x 20 x 6 multiply-adds: tiny
        assert seen == [1] and res.threads == 1 and torch.get_num_threads() == 2
        res = lowshot_eval(x, y, tx, ty, subsets, LAMBDAS, threads=2)
        assert seen[-1] == 2 and res.threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(lowshot_mod, "ONE_THREAD_BELOW", 0)  # as if the problem were large: caller's count
        assert lowshot_eval(x, y, tx, ty, subsets, LAMBDAS).threads == 2 and seen[-1] == 2
        torch.set_num_threads(1)
        monkeypatch.setattr(lowshot_mod, "fit_logreg_path", lambda *a, **kw: 1 / 0)
        with pytest.raises(ZeroDivisionError):                  # restored on error as well
            lowshot_eval(x, y, tx, ty, subsets, LAMBDAS, threads=2)
        assert torch.get_num_threads() == 1
        with pytest.raises(UserError):
            lowshot_eval(x, y, tx, ty, subsets, LAMBDAS, threads=0)
    finally:
        torch.set_num_threads(before)


def test_same_result_with_one_or_two_threads():
    x, y = blobs(600, classes=10, dim=48, spread=3.0)         # overlapping classes: ~59 %, lambdas differ
    tx, ty = blobs(400, classes=10, dim=48, seed=1, spread=3.0)
    subsets = [k_per_class_subset(y, 12, s) for s in range(3)]
    one = lowshot_eval(x, y, tx, ty, subsets, LAMBDAS, threads=1)
    two = lowshot_eval(x, y, tx, ty, subsets, LAMBDAS, threads=2)
    assert one.threads == 1 and two.threads == 2 and 40.0 < one.top1_mean < 90.0
    assert [p["lambda"] for p in one.per_seed] == [p["lambda"] for p in two.per_seed]
    assert one.top1_mean == pytest.approx(two.top1_mean) and one.top1_std == pytest.approx(two.top1_std)
    np.testing.assert_allclose(one.cv_grid, two.cv_grid, atol=1e-9)


def test_subset_file_run_encodes_only_the_subset_images(tmp_path, monkeypatch):
    """ImageNet-1% style: only the subset's training images are encoded (plus the whole test split),
    and the result equals a run whose train split holds just those images."""
    from jepa_eval import runner
    from jepa_eval.datasets.builtin import FolderDataset
    rng = np.random.default_rng(0)
    root = tmp_path / "imnet"
    for split, n in (("train", 8), ("val", 3)):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{cls}_{i}.png")
    subset = tmp_path / "1percent.txt"
    names = ["n01_1.png", "n01_4.png", "n01_6.png", "n02_0.png", "n02_5.png", "n02_7.png"]
    subset.write_text("\n".join(names) + "\n")
    loaded = []
    real = FolderDataset.load_image
    monkeypatch.setattr(FolderDataset, "load_image", lambda self, i: loaded.append(self.files[i]) or real(self, i))
    battery = tmp_path / "b.yaml"
    battery.write_text(f"tasks:\n  - {{task: lowshot, id: in1k-1pct, dataset: imagefolder, root: {root}, "
                       f"splits: {{train: train, test: val}}, params: {{subset_files: ['{subset}'], n_folds: 3}}}}\n")
    spec = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=2"
    (path,) = runner.run_in_process(runner.plan([spec], str(battery), tmp_path / "out", tmp_path / "cache"),
                                    progress=False)
    train_loaded = {p.name for p in loaded if p.parent.parent.name == "train"}
    assert train_loaded == set(names)                           # no other training image was ever read
    rec = json.loads(path.read_text())
    assert rec["details"]["n_train_encoded"] == len(names) and rec["details"]["n_test"] == 6
    metas = [json.loads(m.read_text()) for m in (tmp_path / "cache").glob("*/meta.json")]
    assert sorted(m["n"] for m in metas) == [6, 6]             # train entry: the subset; test entry: all of val
    # the same numbers as a folder that holds only the subset's images
    only = tmp_path / "only"
    for n in names:
        (only / "train" / n[:3]).mkdir(parents=True, exist_ok=True)
        (only / "train" / n[:3] / n).write_bytes((root / "train" / n[:3] / n).read_bytes())
    (only / "val").symlink_to(root / "val")
    battery.write_text(battery.read_text().replace(str(root), str(only)))
    (other,) = runner.run_in_process(runner.plan([spec], str(battery), tmp_path / "out2", tmp_path / "cache"),
                                     progress=False)
    assert json.loads(other.read_text())["metrics"] == rec["metrics"]
