"""The shipped `ijepa-paper` battery end to end, in-process, on a miniature ImageNet-layout folder (with a
SimCLR-style 1percent.txt) and a miniature CLEVR_v1.0 folder: every entry records its protocol and eval
transform, low-shot encodes only its subset, CLEVR trains on all CLEVR train scenes, and the report puts
published numbers only beside the same protocol."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from jepa_eval.cli import main

SPEC = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=4"   # concatPOOL4 needs 4 blocks
CLASSES = ("n01440764", "n01443537", "n01484850")


def mini_imagenet(root: Path) -> Path:
    """root/{train,val}/<wnid>/<wnid>_<i>.JPEG, non-square photos, and a 1percent.txt of 3 per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 70), ("val", 3)):   # 210 training images: the k-NN entry's k goes up to 200
        for c, wnid in enumerate(CLASSES):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 60 * c, 30, (14, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    subset = root / "1percent.txt"
    subset.write_text("".join(f"{wnid}_{i}.JPEG\n" for wnid in CLASSES for i in (0, 3, 5)))
    return subset


def mini_clevr(root: Path) -> None:
    """CLEVR_v1.0 layout: 20 train scenes (VISSL's data = all of them) and 8 val scenes (the test split)."""
    rng = np.random.default_rng(1)
    (root / "scenes").mkdir(parents=True)
    for split, n in (("train", 20), ("val", 8)):
        (root / "images" / split).mkdir(parents=True)
        scenes = []
        for i in range(n):
            k = 3 + i % 8
            objects = [{"pixel_coords": [10, 10, float(rng.uniform(7.5, 12))]} for _ in range(k)]
            name = f"CLEVR_{split}_{i:06d}.png"
            Image.fromarray(np.full((12, 18, 3), 20 * k, np.uint8)).save(root / "images" / split / name)
            scenes.append({"image_index": i, "image_filename": name, "objects": objects})
        (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes}))


def paper_data(tmp_path: Path, monkeypatch) -> None:
    """The miniature ImageNet and CLEVR folders, with the environment variables the battery reads."""
    subset = mini_imagenet(tmp_path / "imagenet")
    mini_clevr(tmp_path / "CLEVR_v1.0")
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "imagenet"))
    monkeypatch.setenv("IMAGENET_1PCT", str(subset))
    monkeypatch.setenv("CLEVR_ROOT", str(tmp_path / "CLEVR_v1.0"))


def test_ijepa_paper_battery_end_to_end(tmp_path, monkeypatch, capsys):
    paper_data(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert main(["run", "--checkpoint", SPEC, "--battery", "ijepa-paper", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in (out / "records").rglob("*.json"))}
    assert set(records) == {"in1k-linear", "in1k-1pct", "in1k-1pct-finetune", "clevr-count", "clevr-dist",
                            "in1k-knn"}   # the transfer entries are optional: skipped without their data
    assert all(r["protocol"] for r in records.values())
    finetuned = records.pop("in1k-1pct-finetune")   # trains on images: its transforms are its own
    assert finetuned["task"] == "finetune" and finetuned["primary_metric"] == "top1"
    crop, square = "resize18-centercrop16-bicubic-imagenetnorm", "resize16-bicubic-imagenetnorm"
    assert {e: r["eval_transform"] for e, r in records.items()} == {
        "in1k-linear": crop, "in1k-1pct": crop, "in1k-knn": crop, "clevr-count": square, "clevr-dist": square}
    assert records["in1k-1pct"]["details"]["n_train_encoded"] == 9            # the subset, not 210 images
    for name in ("clevr-count", "clevr-dist"):
        rec = records[name]
        assert rec["splits"]["train"] == "trainval" and rec["details"]["n_test"] == 8
        assert rec["details"]["n_train"] == 20 and rec["chosen"]["lr"] == 0.01   # all train scenes; VISSL's lr
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Protocols" in md and "IN-1K 1% (frozen)" in md and "VISSL" in md


def test_protocol_and_transform_keys_are_validated(tmp_path, capsys):
    from jepa_eval.battery import load_battery
    good = tmp_path / "good.yaml"
    good.write_text("tasks:\n  - {task: knn, dataset: digits, protocol: '  DINO  k-NN\n    protocol ', "
                    "transform: resize-crop}\n")
    (entry,) = load_battery(str(good)).entries
    assert entry.protocol == "DINO k-NN protocol" and entry.transform == "resize-crop"
    assert entry.config()["transform"] == "resize-crop"       # a changed transform is a different record
    for bad, expect in [("transform: crop", "'transform' must be one of resize-crop, square"),
                        ("protocol: ''", "'protocol' must be a non-empty text"),
                        ("protocol: [a]", "'protocol' must be a non-empty text")]:
        path = tmp_path / "bad.yaml"
        path.write_text(f"tasks:\n  - task: knn\n    dataset: digits\n    {bad}\n")
        assert main(["run", "--checkpoint", SPEC, "--battery", str(path), "--out", str(tmp_path / "o")]) != 0
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err and not (tmp_path / "o" / "records").exists()
