"""Weighted k-NN on cached features (DINO protocol; no hyperparameter is selected)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..probes import knn_eval
from ..task import Task, TaskResult, register_task


@register_task("knn")
class KNNTask(Task):
    poolings = ("lastPOOL",)

    @dataclass
    class Params:
        ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
        temperature: float = 0.07

        def validate(self) -> str | None:
            if not self.ks or min(self.ks) < 1:
                return "ks must be a non-empty list of positive integers"
            return None if self.temperature > 0 else "temperature must be positive"

    def run(self, ctx) -> TaskResult:
        pooling = ctx.poolings[0]
        train, test = ctx.features("train", pooling), ctx.features("test", pooling)
        acc = knn_eval(train.x, train.y, test.x, test.y, ks=self.params.ks, temperature=self.params.temperature)
        primary = 20 if 20 in acc else min(acc)
        metrics = {f"top1_k{primary}": acc[primary], **{f"top1_k{k}": v for k, v in acc.items() if k != primary}}
        return TaskResult(metrics=metrics, details={"n_train": len(train.y), "n_test": len(test.y)})
