"""RankMe: effective rank of the embedding matrix (Garrido et al., 2023); needs no labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis import rankme
from ..task import Task, TaskContext, TaskResult, register_task


@register_task("rankme")
class RankMeTask(Task):
    """Effective rank (RankMe) of pooled embeddings of one split; label-free."""
    splits = ("train",)
    poolings = ("lastPOOL",)
    accepts = ("lastPOOL", "concatPOOL*", "blocksPOOL", "tokens")   # non-pooled features are flattened
    primary = "rankme"

    @dataclass
    class Params:
        eps: float = 1e-7

        def validate(self) -> str | None:
            return None if 0 < self.eps < 1e-2 else "eps must be a small positive number"

    def run(self, ctx: TaskContext) -> TaskResult:
        metrics, details = {}, {}
        for i, pooling in enumerate(ctx.poolings):
            feats = ctx.features("train", pooling)
            x = np.asarray(feats.x, dtype=np.float64)
            if x.ndim != 2:
                x = x.reshape(len(x), -1)  # tokens/blocks: flatten to one vector per image
            value = rankme(x, self.params.eps)
            suffix = "" if i == 0 else f"_{pooling}"
            metrics[f"rankme{suffix}"] = value
            metrics[f"rankme_ratio{suffix}"] = value / min(x.shape)  # 1 = full rank
            details[pooling] = {"n": int(x.shape[0]), "dim": int(x.shape[1])}
        return TaskResult(metrics=metrics, details={"shapes": details})
