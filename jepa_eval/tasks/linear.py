"""Linear probe on frozen features: a grid of heads per feature set, selected on a training hold-out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..probes.linear import Batches, LinearConfig, cached_batches, linear_probe
from ..seeding import seeded_iter
from ..task import Task, TaskContext, TaskResult, probe_config, register_task

RECIPES = ("cached", "paper", "views")


def augmented_batches(ctx: TaskContext, pooling: str, batch_size: int, seed: int) -> Callable[[np.ndarray], Batches]:
    """The paper's recipe: each epoch re-encodes the training images under RandomResizedCrop + flip
    (or the dataset's own ``train_transform``, e.g. CLEVR's flip-only)."""
    from torchvision import transforms as T

    from ..datasets.base import IMAGENET_MEAN, IMAGENET_STD
    from ..features import pool
    size = int(ctx.checkpoint.meta["img_size"])
    ds = ctx.dataset("train")
    if hasattr(ds, "train_transform"):   # a dataset with its own recipe (CLEVR: resize + flip, no crop)
        ds.set_transform(ds.train_transform(size), f"train-transform{size}")
    else:
        ds.set_transform(T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
                                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
                         f"rrc{size}-flip-imagenetnorm")
    encoder = ctx.checkpoint.get_encoder(ctx.encoder).to(ctx.device).eval()
    cuda = ctx.device.type == "cuda"

    def make(fit_rows: np.ndarray) -> Batches:
        def epoch_pass() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(ds, fit_rows.tolist()), batch_size=batch_size, shuffle=True,
                drop_last=len(fit_rows) > batch_size, num_workers=4 if cuda else 0, pin_memory=cuda)
            for images, labels in loader:
                with torch.no_grad(), torch.autocast(ctx.device.type, torch.bfloat16, enabled=cuda):
                    z = pool(encoder, images.to(ctx.device, non_blocking=cuda), pooling)
                yield z.float(), labels.to(ctx.device)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # crops and order are reproducible per epoch: torchvision's transforms and the loader's shuffle
            # draw from the global RNG, so the whole pass runs on a private stream seeded per epoch
            return seeded_iter(seed * 100003 + epoch, epoch_pass())
        return batches
    return make


def view_batches(ctx: TaskContext, poolings: list[str], n_views: int, cfg: LinearConfig, train_y: np.ndarray
                 ) -> tuple[dict[str, Callable[[np.ndarray], Batches]], list[str]]:
    """The views recipe: ``n_views`` augmented views of the training images (``datasets/views.py``), each
    extracted once into the feature cache (every pooling from one encoder pass) and read back from it on
    reruns; epoch e trains on view e mod n_views. Returns the batch makers and the views' transform ids."""
    from ..datasets.views import AugmentedView
    size, base = int(ctx.checkpoint.meta["img_size"]), ctx.dataset("train")
    views = []
    for v in range(n_views):
        view = AugmentedView(base, v, ctx.seed, size)
        got = ctx.cache.get_or_extract_many(ctx.checkpoint, ctx.encoder, poolings, view, dtype=ctx.feature_dtype,
                                            device=ctx.device, progress=ctx.show_progress)
        if any(not np.array_equal(f.y, train_y) for f in got.values()):
            raise RuntimeError(f"view {v} holds other labels than the training split")   # a cache-key bug
        views.append((view.transform_id, got))

    def maker(pooling: str) -> Callable[[np.ndarray], Batches]:
        def make(fit_rows: np.ndarray) -> Batches:
            streams = [cached_batches(got[pooling].x, train_y, fit_rows, cfg, ctx.device) for _, got in views]
            return lambda epoch: streams[epoch % len(streams)](epoch)
        return make
    return {p: maker(p) for p in poolings}, [tid for tid, _ in views]


@register_task("linear")
class LinearTask(Task):
    """Linear probe: a grid of {linear, BN + linear} heads x lrs x wds per pooling, selected on a train hold-out."""
    poolings = ("lastPOOL", "concatPOOL4")
    primary = "top1"
    classification = True

    @dataclass
    class Params(LinearConfig):             # the probe's own fields, plus the task's
        recipe: str = "cached"              # "paper": RandomResizedCrop + flip on the fly (slow); "views": below
        views: int = 4                      # recipe "views": augmented views extracted once, epoch e reads e mod K
        holdout_fraction: float = 0.1

        def config(self, seed: int) -> LinearConfig:
            return probe_config(self, LinearConfig, seed)

        def validate(self) -> str | None:
            if self.recipe not in RECIPES:
                return f"recipe must be one of {', '.join(RECIPES)}, not '{self.recipe}'"
            if self.views < 1:
                return "views must be >= 1"
            if not 0 < self.holdout_fraction < 0.5:
                return "holdout_fraction must be in (0, 0.5)"
            return self.config(0).validate()

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        cfg = p.config(ctx.seed)
        sets, n_classes = {}, 0
        for pooling in ctx.poolings:
            train, test = ctx.features("train", pooling), ctx.features("test", pooling)
            sets[pooling] = (train.x, train.y, test.x, test.y)
            n_classes = max(len(train.classes), int(train.y.max()) + 1)
        augmented, view_ids = None, []
        if p.recipe == "paper":
            augmented = {pl: augmented_batches(ctx, pl, cfg.batch_size, ctx.seed) for pl in sets}
        elif p.recipe == "views":   # more views than epochs would never be read
            augmented, view_ids = view_batches(ctx, list(sets), min(p.views, p.epochs), cfg,
                                               np.asarray(next(iter(sets.values()))[1]))
        res = linear_probe(sets, cfg, n_classes, p.holdout_fraction, ctx.workdir, ctx.device,
                           lambda it, desc: ctx.progress(it, desc), augmented)
        metrics = {"top1": res.top1, **({"top5": res.top5} if res.top5 is not None else {})}
        chosen = {**res.chosen, "epochs": p.epochs, "recipe": p.recipe,
                  **({"views": len(view_ids)} if view_ids else {})}
        return TaskResult(metrics=metrics, chosen=chosen,
                          selected_on=f"train-holdout-{round(100 * p.holdout_fraction)}%",
                          pooling=res.chosen["pooling"],
                          details={"holdout_top1": res.holdout_top1,
                                   "grid": res.grid, "n_heads": len(res.grid),
                                   "n_train": len(sets[res.chosen["pooling"]][1]),
                                   **({"view_transforms": view_ids} if view_ids else {}),
                                   "n_test": len(sets[res.chosen["pooling"]][3])})
