"""Low-shot logistic regression (ImageNet-1% style): k images per class or SimCLR subset files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..probes.lowshot import DEFAULT_LAMBDAS, k_per_class_subset, lowshot_eval, subset_from_file
from ..task import Task, TaskContext, TaskResult, register_task


@register_task("lowshot")
class LowShotTask(Task):
    """Low-shot logistic regression on k images per class (or SimCLR subset files); lambda by CV in the subset."""
    poolings = ("lastPOOL",)
    primary = "top1"
    classification = True

    @dataclass
    class Params:
        k_per_class: int = 12
        seeds: int = 3                       # random k-per-class subsets (ignored with subset_files)
        subset_files: list[str] = field(default_factory=list)   # SimCLR format; $VARS are expanded
        lambdas: list[float] = field(default_factory=lambda: list(DEFAULT_LAMBDAS))
        n_folds: int = 3
        max_iter: int = 100

        def validate(self) -> str | None:
            if self.k_per_class < 1:
                return "k_per_class must be >= 1"
            if not self.subset_files and self.seeds < 3:
                return "seeds must be >= 3 (mean and std over seeds), or give subset_files"
            if self.n_folds < 2 or (not self.subset_files and self.k_per_class < self.n_folds):
                return "n_folds must be >= 2 and <= k_per_class"
            if not self.lambdas or min(self.lambdas) <= 0:
                return "lambdas must be a non-empty list of positive numbers"
            return None if self.max_iter >= 1 else "max_iter must be >= 1"

    # Only the labelled subsets' training images are encoded (the runner narrows the train split to
    # ``select_rows`` before extraction); the test split is encoded whole.
    selected_roles = ("train",)

    @staticmethod
    def subsets(p: "LowShotTask.Params", ds, seed: int) -> tuple[list[np.ndarray], list[str]]:
        """(row indices of ``ds`` per subset, a name per subset): subset files or seeded k per class."""
        y = np.asarray(ds.targets)
        if p.subset_files:
            names = ds.file_names()
            subsets = [subset_from_file(os.path.expandvars(f), names, ds.classes, y) for f in p.subset_files]
            return subsets, [os.path.basename(os.path.expandvars(f)) for f in p.subset_files]
        return ([k_per_class_subset(y, p.k_per_class, seed * 1000 + s, ds.classes) for s in range(p.seeds)],
                [f"seed{seed * 1000 + s}" for s in range(p.seeds)])

    @classmethod
    def select_rows(cls, params: "LowShotTask.Params", role: str, dataset, seed: int) -> np.ndarray:
        """The union of every subset's rows: what the train split's features are extracted for."""
        return np.unique(np.concatenate(cls.subsets(params, dataset, seed)[0]))

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        best = None
        selected = ctx.dataset("train")   # the subsets' union, over the full split (``base``)
        subsets, sources = self.subsets(p, selected.base, ctx.seed)
        subsets = [np.searchsorted(selected.indices, s) for s in subsets]   # rows of the extracted features
        for pooling in ctx.poolings:
            train, test = ctx.features("train", pooling), ctx.features("test", pooling)
            y = np.asarray(train.y)
            res = lowshot_eval(train.x, y, test.x, test.y, subsets, p.lambdas, p.n_folds, ctx.seed,
                               max(len(train.classes), int(y.max()) + 1), ctx.device, p.max_iter)
            cv = float(np.mean([s["cv_top1"] for s in res.per_seed]))
            if best is None or cv > best[0]:
                best = (cv, pooling, res, sources, len(test.y))
        cv, pooling, res, sources, n_test = best
        per_seed = [{"subset": src, **s} for src, s in zip(sources, res.per_seed)]
        return TaskResult(metrics={"top1": res.top1_mean, "top1_std": res.top1_std},
                          chosen={"pooling": pooling, "lambda": [s["lambda"] for s in res.per_seed]},
                          selected_on=f"cv-in-subset-{p.n_folds}fold", pooling=pooling,
                          details={"per_seed": per_seed, "cv_grid": res.cv_grid,
                                   "lambdas": sorted(p.lambdas, reverse=True), "mean_cv_top1": cv,
                                   "n_test": n_test, "n_train_encoded": len(selected),
                                   "std": "sample (ddof=1) over seeds/subsets",
                                   "torch_threads": res.threads})
