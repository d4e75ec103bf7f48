"""The `views` linear recipe: K seeded augmented views extracted once into the feature cache, epoch e trained
on view e mod K, evaluation on the plain test features."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jepa_eval import runner
from jepa_eval.datasets import get_dataset
from jepa_eval.datasets.views import AugmentedView, crop_box
from jepa_eval.features import FeatureCache

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=2"


def test_views_are_reproducible_distinct_and_not_the_eval_transform():
    ds = get_dataset("digits", split="train", image_size=16, max_samples=40)
    v0, v1, again = AugmentedView(ds, 0, 0, 16), AugmentedView(ds, 1, 0, 16), AugmentedView(ds, 0, 0, 16)
    other_seed = AugmentedView(ds, 0, 1, 16)
    assert len({v.transform_id for v in (v0, v1, other_seed)}) == 3 and v0.transform_id == again.transform_id
    assert "view1-seed0" in v1.transform_id and v0.identity == ds.identity
    n = len(ds)
    x0 = [v0[i][0] for i in range(n)]
    for i in reversed(range(n)):   # any access order gives the same view (seeded by image, not by call)
        assert torch.equal(x0[i], again[i][0]) and v0[i][1] == ds[i][1]
    for other in (v1, other_seed, ds):   # another view, another seed, the plain eval transform
        assert sum(not torch.equal(x0[i], other[i][0]) for i in range(n)) >= n - 2


def test_crop_boxes_stay_inside_the_image_with_torchvision_scales():
    rng = np.random.default_rng(0)
    for width, height in ((64, 48), (8, 8), (300, 20)):
        for _ in range(200):
            top, left, h, w = crop_box(rng, width, height)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
            if (width, height) == (64, 48):
                assert 0.07 <= h * w / (width * height) <= 1.0 and 0.7 <= w / h <= 1.4


def test_flip_only_datasets_get_resize_and_flip(tmp_path):
    from test_transfer_datasets import write_cifar
    write_cifar(tmp_path)
    ds = get_dataset("cifar100", str(tmp_path), split="train", image_size=24)
    flips = 0
    for v in range(4):
        view = AugmentedView(ds, v, 0, 24)
        assert "resize-hflip" in view.transform_id
        for i in range(len(ds)):
            x, plain = view[i][0], ds[i][0]
            assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))   # never cropped
            flips += not torch.equal(x, plain)
    assert 0 < flips < 4 * len(ds)


def run(tmp_path, out, battery_text, monkeypatch):
    calls = []
    extract = FeatureCache._extract

    def counting(self, encoder, entries, dataset, *a, **kw):
        calls.append(dataset.transform_id)
        return extract(self, encoder, entries, dataset, *a, **kw)
    monkeypatch.setattr(FeatureCache, "_extract", counting)
    battery = tmp_path / "b.yaml"
    battery.write_text(battery_text)
    torch.manual_seed(0)
    paths = runner.run_in_process(runner.plan([SPEC], str(battery), tmp_path / out, tmp_path / "cache"),
                                  progress=False)
    return [json.loads(p.read_text()) for p in paths], calls


ENTRY = ("  - {{task: linear, id: {0}, dataset: digits, pooling: [lastPOOL, concatPOOL2], "
         "max_samples: {{train: 300, test: 100}}, params: {{epochs: 3, batch_size: 32, recipe: {0}, views: 2, "
         "lrs: [0.1], wds: [0.0]}}}}\n")


def test_views_recipe_runs_end_to_end_and_hits_the_cache_on_rerun(tmp_path, monkeypatch):
    (views,), calls = run(tmp_path, "out1", "tasks:\n" + ENTRY.format("views"), monkeypatch)
    # plain train, plain test, then each view: both poolings of a split come from one encoder pass
    assert len(calls) == 4 and sum(c.startswith("view") for c in calls) == 2
    assert views["chosen"]["recipe"] == "views" and views["chosen"]["views"] == 2
    ids = views["details"]["view_transforms"]
    assert [i.split("-")[0] for i in ids] == ["view0", "view1"] and all("seed0" in i for i in ids)
    assert views["details"]["n_test"] == 100 and 20.0 < views["metrics"]["top1"] <= 100.0   # 10 classes
    (again,), calls = run(tmp_path, "out2", "tasks:\n" + ENTRY.format("views"), monkeypatch)
    assert calls == []                                       # every view read back from the cache
    assert again["metrics"] == views["metrics"] and again["details"]["grid"] == views["details"]["grid"]
    # the cached recipe reads the same plain features (no extraction) but trains on other inputs
    (cached,), calls = run(tmp_path, "out3", "tasks:\n" + ENTRY.format("cached"), monkeypatch)
    assert calls == [] and cached["details"]["grid"] != views["details"]["grid"]


def test_epoch_e_trains_on_view_e_mod_k(tmp_path):
    from jepa_eval.battery import load_battery
    from jepa_eval.probes.stream import holdout_split
    from jepa_eval.tasks.linear import view_batches
    battery = tmp_path / "b.yaml"
    battery.write_text("tasks:\n" + ENTRY.format("views"))
    (job,) = runner.plan([SPEC], str(battery), tmp_path / "out", tmp_path / "cache")
    ctx = runner.job_context(job, runner.load_checkpoint(SPEC), progress=False)
    train = ctx.features("train", "lastPOOL")
    cfg = load_battery(str(battery)).entries[0].params.config(0)
    makers, ids = view_batches(ctx, ["lastPOOL"], 3, cfg, train.y)
    fit, _ = holdout_split(train.y, 0.1, 0)
    stream = makers["lastPOOL"](fit)
    views = [ctx.cache.get_or_extract(ctx.checkpoint, "target", "lastPOOL",
                                      AugmentedView(ctx.dataset("train"), v, 0, 16), progress=False).x
             for v in range(3)]
    for epoch in range(5):
        seen = torch.cat([x for x, _ in stream(epoch)]).double().sum(0).numpy()
        sums = [np.asarray(v[fit], dtype=np.float64).sum(0) for v in views]
        match = [np.allclose(seen, s, rtol=1e-5) for s in sums]
        assert match == [k == epoch % 3 for k in range(3)], epoch
    assert len(ids) == 3
