"""Weighted k-NN on cached features (DINO protocol; no hyperparameter is selected)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..probes import knn_eval
from ..probes.knn import BACKENDS, choose_knn_backend
from ..task import Task, TaskContext, TaskResult, register_task


@register_task("knn")
class KNNTask(Task):
    """Weighted k-NN (DINO): cosine similarity, votes exp(sim / T), one top-1 per k; nothing selected."""
    poolings = ("lastPOOL",)
    single_pooling = True
    classification = True

    @dataclass
    class Params:
        ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
        temperature: float = 0.07
        backend: str = "auto"      # auto | faiss | streaming (same accuracies; see probes.knn.choose_knn_backend)

        def validate(self) -> str | None:
            if not self.ks or min(self.ks) < 1:
                return "ks must be a non-empty list of positive integers"
            if self.backend not in BACKENDS:
                return f"backend must be one of {', '.join(BACKENDS)}"
            return None if self.temperature > 0 else "temperature must be positive"

    def _primary_k(self) -> int:
        return 20 if 20 in self.params.ks else min(self.params.ks)

    def primary_metric(self) -> str:
        return f"top1_k{self._primary_k()}"

    def check(self, sizes: dict[str, int], class_counts: dict[str, list[int]]) -> str | None:
        n = sizes.get("train", 0)
        too_big = [k for k in self.params.ks if k > n]
        return (f"ks {too_big} exceed the {n} training images (top1_k{too_big[0]} would be computed with "
                f"k={n}); lower them or use more training images") if too_big else None

    def run(self, ctx: TaskContext) -> TaskResult:
        pooling = ctx.poolings[0]
        train, test = ctx.features("train", pooling), ctx.features("test", pooling)
        p = self.params
        backend, _ = choose_knn_backend(len(train.x), train.x.shape[1], p.backend)
        acc = knn_eval(train.x, train.y, test.x, test.y, ks=p.ks, temperature=p.temperature, backend=backend)
        primary = self._primary_k()
        metrics = {f"top1_k{primary}": acc[primary], **{f"top1_k{k}": v for k, v in acc.items() if k != primary}}
        return TaskResult(metrics=metrics,
                          details={"n_train": len(train.y), "n_test": len(test.y), "backend": backend})
