"""End-to-end fine-tuning on a labelled subset (the I-JEPA paper's ImageNet-1% row), MAE recipe.

Unlike the other tasks it trains on images, not cached features: ``feature_needs`` is empty, so the
feature cache and the launchers' features jobs never extract anything for it. The recipe and each of its
choices are described in ``jepa_eval/probes/finetune.py`` and ``docs/finetune.md``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..probes.finetune import FinetuneConfig, finetune
from ..probes.lowshot import k_per_class_subset, subset_from_file
from ..task import Task, TaskContext, TaskResult, probe_config, register_task

if TYPE_CHECKING:
    from ..battery import BatteryEntry


@register_task("finetune")
class FinetuneTask(Task):
    """End-to-end fine-tuning on a labelled subset (the ImageNet-1% row), MAE recipe, on images."""
    poolings = accepts = ("lastPOOL",)   # unused: the head is chosen by params.head; only this default is accepted
    single_pooling = True
    pooling_note = "finetune trains its own head: leave 'pooling' out and choose params.head (mae or lastPOOL)"
    primary = "top1"

    @dataclass
    class Params(FinetuneConfig):          # the recipe's own fields, plus the task's
        subset_file: str = ""              # SimCLR format (e.g. 1percent.txt); $VARS are expanded
        k_per_class: int = 12              # without subset_file: a seeded k-per-class subset
        holdout_fraction: float = 0.1      # of the subset, only when several blrs are given

        def config(self, seed: int) -> FinetuneConfig:
            return probe_config(self, FinetuneConfig, seed)

        def validate(self) -> str | None:
            if self.k_per_class < 1:
                return "k_per_class must be >= 1"
            if not 0 < self.holdout_fraction < 0.5:
                return "holdout_fraction must be in (0, 0.5)"
            return self.config(0).validate()

    @classmethod
    def feature_needs(cls, entry: BatteryEntry) -> list[tuple[str, str]]:
        return []   # reads images: nothing to extract into the feature cache

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        train, test = ctx.dataset("train"), ctx.dataset("test")
        y = np.asarray(train.targets)
        if p.subset_file:
            path = os.path.expandvars(p.subset_file)
            if "$" in path:
                raise UserError(f"subset_file '{p.subset_file}': an environment variable in it is not set")
            rows, source = subset_from_file(path, train.file_names(), train.classes, y), os.path.basename(path)
        else:
            rows = k_per_class_subset(y, p.k_per_class, ctx.seed, train.classes)
            source = f"{p.k_per_class}-per-class-seed{ctx.seed}"
        n_classes = max(len(train.classes), int(y.max()) + 1)
        res = finetune(ctx.checkpoint.get_encoder(ctx.encoder), train, rows, test, p.config(ctx.seed),
                       n_classes, int(ctx.checkpoint.meta["img_size"]), p.holdout_fraction, ctx.workdir,
                       ctx.device, lambda it, desc: ctx.progress(it, desc))
        metrics = {"top1": res.top1, **({"top5": res.top5} if res.top5 is not None else {})}
        epoch_loss = [float(np.mean(res.losses[i:i + res.schedule["steps_per_epoch"]]))
                      for i in range(0, len(res.losses), res.schedule["steps_per_epoch"])]
        return TaskResult(
            metrics=metrics, chosen=res.chosen, pooling=f"finetuned-{p.head}",
            selected_on=res.selected_on or "none: one configuration (give several blrs to select on a hold-out)",
            details={"protocol": "fine-tuned (MAE recipe, mixup/cutmix off)",
                     "subset": source, "n_train": len(rows), "n_test": len(test), "n_classes": n_classes,
                     "schedule": res.schedule, "grid": res.grid, "train_loss_per_epoch": epoch_loss,
                     "train_transform": f"rrc-flip-{p.rand_augment or 'no-randaug'}-re{p.re_prob}",
                     "eval_transform": test.transform_id, "image_size": int(ctx.checkpoint.meta["img_size"])})
