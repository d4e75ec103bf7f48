"""Shared by the launcher tests: a tiny model, tiny batteries on digits, a damaged image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPEC = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
KNN_A = """  - task: knn
    id: knn-a
    dataset: digits
    max_samples: {train: 300, test: 100}
    params: {ks: [5, 10]}
"""
KNN_B = """  - task: knn
    id: knn-b
    dataset: digits
    max_samples: {train: 300, test: 100}
    params: {ks: [20], temperature: 0.1}
"""


def write_battery(path: Path, *entries: str) -> Path:
    path.write_text("description: launcher test battery\ntasks:\n" + "".join(entries))
    return path


def broken_entry(root: Path) -> str:
    """A k-NN entry on an image folder where one file is not an image: its jobs must fail."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    (root / "train" / "b" / "1.png").write_bytes(b"this is not a png")
    return f"""  - task: knn
    id: knn-broken
    dataset: imagefolder
    root: {root}
    splits: {{train: train, test: train}}
    params: {{ks: [1]}}
"""


def metrics_by_entry(out: Path) -> dict[str, dict]:
    import json
    found = {}
    for path in sorted((out / "records").rglob("*.json")):
        rec = json.loads(path.read_text())
        found[rec["entry"]] = {k: rec[k] for k in ("metrics", "primary_metric", "chosen", "dataset", "details")}
    return found
