"""CLEVR Count/Dist: VTAB labels and splits on hand-made scene files, the procedural renderer, make-clevr."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_eval.cli import main
from jepa_eval.clevr import render
from jepa_eval.clevr.labels import DIST_CLASSES, count_label, dist_label
from jepa_eval.clevr.write import image_shape, scene_rng, write_split
from jepa_eval.datasets import get_dataset
from jepa_eval.datasets.clevr import flip_transform
from jepa_eval.errors import UserError

THRESHOLDS = [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]


def vtab_dist(d: float) -> int:
    """VTAB's rule written out: reduce_max(where(thrs - dist < 0)), in float32 like tf."""
    return max(i for i, t in enumerate(THRESHOLDS) if np.float32(t) - np.float32(d) < 0)


def obj(depth: float) -> dict:
    return {"shape": "cube", "color": "red", "size": "large", "material": "metal", "rotation": 0.0,
            "3d_coords": [0.0, 0.0, 0.5], "pixel_coords": [10, 10, depth]}


def write_clevr(root: Path, split: str, scenes: list[list[dict]], images: bool = True) -> None:
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    records = []
    for i, objects in enumerate(scenes):
        name = f"CLEVR_{split}_{i:06d}.png"
        records.append({"split": split, "image_index": i, "image_filename": name, "objects": objects})
        if images:
            Image.new("RGB", (6, 4), (i % 256, 0, 0)).save(root / "images" / split / name)
    (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": records}))


# the nearest object decides: extra farther objects must not change the label
DEPTHS = [(7.5, 0), (8.0, 0), (8.0000000001, 0), (8.25, 1), (8.5, 1), (8.75, 2), (9.0, 2), (9.25, 3),
          (9.5, 3), (9.75, 4), (10.0, 4), (10.5, 5), (99.0, 5), (100.0, 5)]


def test_labels_match_vtab_on_hand_made_scenes(tmp_path):
    scenes = [[obj(d), obj(d + 1.0), obj(d + 3.0)] for d, _ in DEPTHS]
    scenes += [[obj(12.0) for _ in range(10)]]
    write_clevr(tmp_path, "train", scenes)
    dist = get_dataset("clevr-dist", str(tmp_path), "trainval", image_size=16)
    expected = [label for _, label in DEPTHS] + [5]
    assert list(dist.targets) == expected == [vtab_dist(d) for d, _ in DEPTHS] + [vtab_dist(12.0)]
    assert dist.classes == DIST_CLASSES and len(dist.classes) == 6 and dist.classes[0] == "(0, 8]"
    count = get_dataset("clevr-count", str(tmp_path), "trainval", image_size=16)
    assert list(count.targets) == [0] * len(DEPTHS) + [7]
    assert count.classes == [str(n) for n in range(3, 11)]
    x, y = count[len(DEPTHS)]
    assert x.shape == (3, 16, 16) and y == 7          # resized to the model input, no crop
    assert dist_label(0.0) == -1 and count_label(3) == 0


def test_vtab_splits(tmp_path):
    # 2,000 train scenes: train = first 1,800, val = last 200; test = CLEVR's val scenes
    n = 2000
    write_clevr(tmp_path, "train", [[obj(8.25)] * (3 + i % 8) for i in range(n)], images=False)
    write_clevr(tmp_path, "val", [[obj(9.2)] * 4 for _ in range(30)], images=False)
    names = lambda ds: [int(p.stem.split("_")[-1]) for p in ds.files]  # noqa: E731
    expect = {"train": range(1800), "val": range(1800, 2000), "trainval": range(2000), "train800": range(800),
              "val200": range(1800, 2000), "train800val200": [*range(800), *range(1800, 2000)]}
    for split, idx in expect.items():
        ds = get_dataset("clevr-count", str(tmp_path), split)
        assert names(ds) == list(idx), split
        assert list(ds.targets) == [i % 8 for i in idx]
    test = get_dataset("clevr-dist", str(tmp_path), "test")
    assert len(test) == 30 and set(test.targets) == {3} and test.files[0].parent.name == "val"
    write_clevr(tmp_path, "train", [[obj(8.25)] * 3 for _ in range(1500)], images=False)
    with pytest.raises(UserError, match="800 train and 200 val"):
        get_dataset("clevr-count", str(tmp_path), "train800val200")


def test_errors(tmp_path):
    with pytest.raises(UserError, match="make-clevr"):
        get_dataset("clevr-count", None, "train")
    with pytest.raises(UserError, match="folder not found.*make-clevr"):
        get_dataset("clevr-count", str(tmp_path / "nope"), "train")
    with pytest.raises(UserError, match="CLEVR_train_scenes.json"):
        get_dataset("clevr-dist", str(tmp_path), "train")
    write_clevr(tmp_path, "train", [[obj(9.0)] * 3, [obj(9.0)] * 3])
    with pytest.raises(UserError, match="CLEVR_val_scenes.json"):
        get_dataset("clevr-dist", str(tmp_path), "test")
    with pytest.raises(UserError, match="no split 'validation'"):
        get_dataset("clevr-dist", str(tmp_path), "validation")
    ds = get_dataset("clevr-dist", str(tmp_path), "trainval")
    (tmp_path / "images" / "train" / "CLEVR_train_000001.png").unlink()
    ds[0]
    with pytest.raises(UserError, match="image missing.*CLEVR_train_000001.png"):
        ds[1]
    no_depth = obj(9.0)
    no_depth["pixel_coords"] = [1, 2]
    write_clevr(tmp_path, "train", [[obj(9.0)] * 3, [obj(9.0), no_depth, obj(9.0)]])
    with pytest.raises(UserError, match="scene 1 .*without pixel_coords"):
        get_dataset("clevr-dist", str(tmp_path), "trainval")
    write_clevr(tmp_path, "train", [[obj(9.0)] * 2])
    with pytest.raises(UserError, match="outside VTAB"):
        get_dataset("clevr-count", str(tmp_path), "trainval")
    assert main(["make-clevr", "--out", str(tmp_path / "x"), "--size", "8"]) == 2


def test_flip_only_augmentation():
    img = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    tf = flip_transform(8)
    outs = []
    for seed in range(12):
        torch.manual_seed(seed)
        outs.append(tf(img))
    plain, flipped = outs[0], outs[0].flip(-1)
    assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outs)
    assert any(torch.equal(o, flipped) for o in outs) and any(torch.equal(o, plain) for o in outs)
    assert plain.shape == (3, 8, 8)


def test_culled_ray_casting_matches_brute_force():
    for i in range(6):
        rng = np.random.default_rng([1, i])
        cam = render.Camera(render.CAMERA_LOCATION + rng.uniform(-0.5, 0.5, 3), 60, 40)
        objs, _ = render.sample_layout(rng, 10)
        d = render._rays(60, 40, 1)
        t_all, k_all = render.cast(cam.location, d, objs)
        t_cull, k_cull = render.visible(cam, objs, supersample=1)
        assert (k_all >= 0).sum() > 50 and np.array_equal(k_all, k_cull) and np.array_equal(t_all, t_cull)
        pts = cam.location + d[::7] * 13.0 * rng.uniform(0.5, 1.0, (len(d[::7]), 1))
        pts[:, 2] = np.abs(pts[:, 2]) * 0.1
        key = render._unit(render.KEY_LIGHT)
        t_all, _ = render.cast(pts, np.broadcast_to(key, pts.shape), objs)
        assert np.array_equal(np.isfinite(t_all), render.in_shadow(pts, key, objs))


def test_scene_geometry_like_clevr():
    w, h = image_shape(96)
    for i in range(8):
        img, scene = render.render_scene(scene_rng(0, "train", i), w, h, supersample=1)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        objs = scene["objects"]
        assert 3 <= len(objs) <= 10
        xyz = np.array([o["3d_coords"] for o in objs])
        for o, (x, y, z) in zip(objs, xyz):
            r = render.SIZES[o["size"]] / (np.sqrt(2) if o["shape"] == "cube" else 1)
            assert abs(z - r) < 1e-9 and abs(x) <= 3 and abs(y) <= 3         # resting on the ground
            assert o["color"] in render.COLORS and o["material"] in render.MATERIALS
            px, py, depth = o["pixel_coords"]
            assert isinstance(px, int) and 0 <= px < w and 0 <= py < h and 7 < depth < 16
        # nearer along the camera's view axis <=> larger depth difference along 'front'
        front = xyz @ np.array(scene["directions"]["front"])
        depth = np.array([o["pixel_coords"][2] for o in objs])
        assert np.corrcoef(front, depth)[0, 1] < -0.9


def test_depths_reach_every_dist_bin():
    # the sampler (camera jitter + placement) alone, without rendering: fast and covers all 6 bins
    labels = []
    for i in range(200):
        rng = np.random.default_rng([3, i])
        cam = render.Camera(render.CAMERA_LOCATION + rng.uniform(-0.5, 0.5, 3), 48, 32)
        objs, _ = render.sample_layout(rng, int(rng.integers(3, 11)))
        labels.append(dist_label(cam.project(objs.center)[:, 2].min()))
    assert set(labels) == set(range(6))


def test_make_clevr_deterministic_and_readable(tmp_path, capsys):
    args = ["make-clevr", "--n-train", "12", "--n-val", "3", "--size", "48", "--seed", "5"]
    assert main([*args, "--out", str(tmp_path / "a"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Count classes" in out and "Dist classes" in out and "(0, 8]" in out
    assert main([*args, "--out", str(tmp_path / "b"), "--workers", "2"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 + 3 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    write_split(tmp_path / "c", "val", 3, 48, seed=6, supersample=2)
    assert (tmp_path / "c/images/val/CLEVR_val_000000.png").read_bytes() != \
        (tmp_path / "a/images/val/CLEVR_val_000000.png").read_bytes()
    scenes = json.loads((tmp_path / "a/scenes/CLEVR_train_scenes.json").read_text())["scenes"]
    assert [s["image_index"] for s in scenes] == list(range(12))
    assert all({"pixel_coords", "3d_coords", "shape", "color", "size", "material", "rotation"} <= set(o)
               for s in scenes for o in s["objects"])
    # the histogram lines printed for the train split add up to its 12 scenes
    hist = out.split("train Count classes (objects):\n")[1].split("\ntrain Dist")[0]
    assert sum(int(line.split()[1]) for line in hist.splitlines()) == 12
    for name in ("clevr-count", "clevr-dist"):
        ds = get_dataset(name, str(tmp_path / "a"), "trainval", image_size=32)
        expect = [count_label(len(s["objects"])) if name == "clevr-count" else
                  dist_label(min(o["pixel_coords"][2] for o in s["objects"])) for s in scenes]
        assert list(ds.targets) == expect
        x, y = ds[3]
        assert x.shape == (3, 32, 32) and y == expect[3]
        assert Image.open(ds.files[3]).size == image_shape(48)
    assert len(get_dataset("clevr-count", str(tmp_path / "a"), "test")) == 3
