"""Transfer datasets (CIFAR-100, Places205, iNat18) on tiny fake copies of their official layouts: labels,
class names, splits, the folder fallback, one-line errors for missing or damaged files; the battery entries
and their published numbers."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from jepa_eval.datasets import get_dataset
from jepa_eval.datasets.transfer import PLACES_IMAGES, PLACES_LISTS
from jepa_eval.errors import UserError


def write_cifar(root, n_train=12, n_test=5, seed=0):
    """The CIFAR-100 python layout: pickles with data [N, 3072] (R, G, B planes) and fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"class{i:02d}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, n)]
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * n,
                         "filenames": [f"img{i}.png" for i in range(n)], "batch_label": split}, f, protocol=2)
        out[split] = (data, labels)
    return folder, out


def test_cifar100_reads_the_python_pickles(tmp_path):
    folder, raw = write_cifar(tmp_path)
    for root in (tmp_path, folder):                       # the parent folder or cifar-100-python itself
        ds = get_dataset("cifar100", str(root), split="train", image_size=32)
        data, labels = raw["train"]
        assert len(ds) == 12 and list(ds.targets) == labels and ds.classes[7] == "class07" and len(ds.classes) == 100
        img = np.asarray(ds.load_image(3))
        # channel planes in row-major order: pixel (row 2, col 5) of image 3
        assert img.shape == (32, 32, 3)
        assert tuple(img[2, 5]) == tuple(data[3, [2 * 32 + 5, 1024 + 2 * 32 + 5, 2048 + 2 * 32 + 5]])
        x, y = ds[3]
        assert x.shape == (3, 32, 32) and y == labels[3]
    test = get_dataset("cifar100", str(tmp_path), split="test", image_size=16)
    assert len(test) == 5 and list(test.targets) == raw["test"][1] and test.identity["split"] == "test"
    assert test.identity["dataset"] == "cifar100" and test.eval_transform == "square"


def test_cifar100_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="needs root"):
        get_dataset("cifar100", None)
    with pytest.raises(UserError, match="no split 'val'"):
        get_dataset("cifar100", str(tmp_path), split="val")
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"x")
    with pytest.raises(UserError, match="extract .*cifar-100-python.tar.gz"):
        get_dataset("cifar100", str(tmp_path))
    folder, _ = write_cifar(tmp_path / "ok")
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])   # truncated download
    with pytest.raises(UserError, match="cannot read CIFAR-100 file .*train"):
        get_dataset("cifar100", str(tmp_path / "ok"))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_cifar100_pickle_cannot_run_code(tmp_path, monkeypatch):
    folder, _ = write_cifar(tmp_path)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": _Evil(), "fine_labels": [0]}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refusing to load 'posix.system'"):
        get_dataset("cifar100", str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def _jpeg(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_places(root):
    """The official Places205 layout: list files + the images256 tree; 'f/field/cultivated' is a 3-level class."""
    classes = {0: "a/abbey", 1: "b/bedroom", 2: "f/field/cultivated"}
    lists = root / PLACES_LISTS
    lists.mkdir(parents=True)
    rows = {}
    for split, per in (("train", 3), ("val", 2)):
        rows[split] = [(f"{classes[c]}/{split}_{c}_{i}.jpg", c) for c in classes for i in range(per)]
        rows[split] = rows[split][::-1]   # the file's order, not sorted by class, is the row order
        (lists / f"{split}_places205.csv").write_text("".join(f"{p} {c}\n" for p, c in rows[split]))
        for p, c in rows[split]:
            _jpeg(root / PLACES_IMAGES / p, (80 * c, 10, 10))
    return rows


def test_places205_official_layout(tmp_path):
    rows = write_places(tmp_path)
    train = get_dataset("places205", str(tmp_path), split="train", image_size=16)
    assert train.classes == ["abbey", "bedroom", "field/cultivated"]
    assert list(train.targets) == [c for _, c in rows["train"]] and len(train) == 9
    assert np.asarray(train.load_image(0))[0, 0, 0] == 160     # row 0 is the file's first line (class 2)
    val = get_dataset("places205", str(tmp_path), split="val", image_size=16)
    assert len(val) == 6 and val.classes == train.classes and val.identity["split"] == "val"
    assert train.eval_transform == "resize-crop" and train[0][0].shape == (3, 16, 16)


def test_places205_errors_and_folder_fallback(tmp_path):
    with pytest.raises(UserError, match="Places205 list not found"):
        get_dataset("places205", str(tmp_path))
    rows = write_places(tmp_path / "p")
    lst = tmp_path / "p" / PLACES_LISTS / "train_places205.csv"
    lst.write_text("a/abbey/x.jpg zero\n")
    with pytest.raises(UserError, match="line 1: expected '<relative/image/path> <label>'"):
        get_dataset("places205", str(tmp_path / "p"))
    lst.write_text("a/abbey/missing.jpg 0\n")
    with pytest.raises(UserError, match="Places205 image missing: .*missing.jpg"):
        get_dataset("places205", str(tmp_path / "p"))
    # an image listed but damaged fails when read, naming the file
    val = get_dataset("places205", str(tmp_path / "p"), split="val")
    val.files[1].write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="corrupt or unreadable image"):
        val[1]
    # class folders root/{train,val}/<class>/
    for split in ("train", "val"):
        for c in ("beach", "abbey"):
            _jpeg(tmp_path / "folders" / split / c / "0.jpg", (1, 2, 3))
    ds = get_dataset("places205", str(tmp_path / "folders"), split="val")
    assert ds.classes == ["abbey", "beach"] and ds.identity["layout"] == "class-folders"
    assert ds.identity["dataset"] == "places205" and len(rows["val"]) == 6


def write_inat(root):
    """COCO-style iNat18 annotations; category ids are not 0..C-1 in file order."""
    cats = [{"id": 7, "name": "Apis mellifera", "supercategory": "Insecta"},
            {"id": 2, "name": "Quercus robur", "supercategory": "Plantae"},
            {"id": 30, "name": "Parus major", "supercategory": "Aves"}]
    want = {}
    for split, per in (("train", 2), ("val", 1)):
        images, anns = [], []
        for k, cat in enumerate(cats * per):
            name = f"train_val2018/{cat['supercategory']}/{cat['id']}/{split}{k}.jpg"
            images.append({"id": 1000 + k, "file_name": name, "width": 40, "height": 30})
            anns.append({"id": k, "image_id": 1000 + k, "category_id": cat["id"]})
            _jpeg(root / name, (cat["id"], 0, 0))
        (root / f"{split}2018.json").write_text(json.dumps({"info": {}, "images": images, "annotations": anns[::-1],
                                                            "categories": cats, "licenses": []}))
        want[split] = [{2: 0, 7: 1, 30: 2}[c["id"]] for c in cats * per]
    return want


def test_inat18_official_layout(tmp_path):
    want = write_inat(tmp_path)
    train = get_dataset("inat18", str(tmp_path), split="train", image_size=16)
    assert train.classes == ["Quercus robur", "Apis mellifera", "Parus major"]   # sorted by category id
    assert list(train.targets) == want["train"] and len(train) == 6
    assert np.asarray(train.load_image(2))[0, 0, 0] == 30        # image 2 is category 30 -> label 2
    val = get_dataset("inat18", str(tmp_path), split="val", image_size=16)
    assert list(val.targets) == want["val"] and val.identity["split"] == "val"


def test_inat18_errors(tmp_path):
    with pytest.raises(UserError, match="iNat18 annotations not found: .*train2018.json"):
        get_dataset("inat18", str(tmp_path))
    write_inat(tmp_path)
    path = tmp_path / "val2018.json"
    ann = json.loads(path.read_text())
    path.write_text(path.read_text()[:50])
    with pytest.raises(UserError, match="cannot read iNat18 annotations .*val2018.json"):
        get_dataset("inat18", str(tmp_path), split="val")
    ann["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(ann))
    with pytest.raises(UserError, match="category 999, which is not in 'categories'"):
        get_dataset("inat18", str(tmp_path), split="val")
    ann["annotations"] = ann["annotations"][1:]
    path.write_text(json.dumps(ann))
    with pytest.raises(UserError, match="has no annotation"):
        get_dataset("inat18", str(tmp_path), split="val")
    del ann["images"]
    path.write_text(json.dumps(ann))
    with pytest.raises(UserError, match="not a COCO-style iNat18 annotation file"):
        get_dataset("inat18", str(tmp_path), split="val")


def test_paper_battery_has_optional_transfer_entries(monkeypatch, tmp_path):
    from jepa_eval.battery import load_battery
    for var in ("CIFAR100_ROOT", "PLACES205_ROOT", "INAT18_ROOT"):
        monkeypatch.setenv(var, f"/data/{var}")
    paper = {e.id: e for e in load_battery("ijepa-paper").entries}
    want = {"cifar100-linear": ("cifar100", "test", 28), "places205-linear": ("places205", "val", 14),
            "inat18-linear": ("inat18", "val", 84)}
    for eid, (name, test_split, epochs) in want.items():
        e = paper[eid]
        assert e.task == "linear" and e.datasets == [name] and e.optional and e.poolings == ["lastPOOL", "concatPOOL4"]
        assert e.splits == {"train": "train", "test": test_split} and e.params.epochs == epochs
        assert e.root.startswith("/data/") and e.params.lrs == paper["in1k-linear"].params.lrs
        assert e.params.norms == ["none", "bn"] and e.params.wds == paper["in1k-linear"].params.wds
    # with no data the entries are skipped with a note, not failed
    from jepa_eval import runner
    jobs = [j for j in runner.plan(["pixels:8"], "ijepa-paper", tmp_path / "out", tmp_path / "cache")
            if j.entry_id in want]
    assert len(jobs) == 3
    from jepa_eval import load_checkpoint
    ck = load_checkpoint("pixels:8")
    for job in jobs:
        _, entry, reason, _, _ = runner.resolve_job(job, ck)
        assert entry is None and reason.startswith("optional entry, data absent")


def test_published_transfer_numbers_land_in_their_own_columns():
    from jepa_eval.report.tables import load_published, published_rows
    pub = load_published()
    cols = [{"column": f"{e} (top1)", "task": "linear", "entry": e, "dataset": d}
            for e, d in (("cifar100-linear", "cifar100"), ("places205-linear", "places205"),
                         ("inat18-linear", "inat18"), ("in1k-linear", "imagefolder"))]
    rows = published_rows(cols, pub)
    got = {(r.model, r.column): r.mean for r in rows.itertuples()}
    assert got["I-JEPA ViT-H/14 (published)", "cifar100-linear (top1)"] == 87.5
    assert got["I-JEPA ViT-G/16 (IN-22K) (published)", "inat18-linear (top1)"] == 55.3
    assert got["iBOT ViT-L/16 (published)", "places205-linear (top1)"] == 60.4
    # each transfer column holds only its own benchmark; ImageNet keeps only the IN-1K numbers
    assert set(rows[rows.column == "places205-linear (top1)"].benchmark) == {"Places205 linear"}
    assert set(rows[rows.column == "in1k-linear (top1)"].benchmark) == {"IN-1K linear"}
    assert len(rows[rows.column == "inat18-linear (top1)"]) == 7
