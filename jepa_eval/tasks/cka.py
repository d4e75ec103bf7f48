"""Linear CKA between the blocks of one encoder and between encoders/checkpoints (same images)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analysis import cka_matrix
from ..task import Task, TaskResult, register_task


@register_task("cka")
class CKATask(Task):
    """Linear CKA heatmaps: block x block of this encoder, and this encoder vs reference checkpoints."""
    splits = ("train",)
    poolings = ("blocksPOOL",)

    @dataclass
    class Params:
        # checkpoint specs to compare with (their target encoder), or the words 'target'/'context'
        # for that encoder of this checkpoint (skipped when it is the one being evaluated)
        references: list[str] = field(default_factory=list)

    def _reference(self, ctx, ref: str, pooling: str) -> tuple[str, np.ndarray]:
        from ..checkpoint import checkpoint_name, load_checkpoint
        if ref in ("target", "context"):
            ck, encoder, name = ctx.checkpoint, ref, f"this [{ref}]"
        else:
            ck, encoder, name = load_checkpoint(ref), "target", f"{checkpoint_name(ref)} [target]"
        feats = ctx.cache.get_or_extract(ck, encoder, pooling, ctx.dataset("train"), dtype=ctx.feature_dtype,
                                         device=ctx.device, progress=ctx.show_progress)
        return name, np.asarray(feats.x[:, -1], dtype=np.float64)

    def run(self, ctx) -> TaskResult:
        from ..errors import UserError
        pooling = ctx.poolings[0]
        if pooling != "blocksPOOL":
            raise UserError(f"cka reads per-block features: set pooling: blocksPOOL, not {pooling}")
        feats = ctx.features("train", pooling)
        blocks = [np.asarray(feats.x[:, i], dtype=np.float64) for i in range(feats.x.shape[1])]
        layers = cka_matrix(blocks)
        depth = len(blocks)
        metrics = {"cka_first_last": float(layers[0, -1]),
                   "cka_adjacent_mean": float(np.mean([layers[i, i + 1] for i in range(depth - 1)]))
                   if depth > 1 else 1.0}
        details = {"n": len(blocks[0]), "pooling": pooling,
                   "layers": {"labels": [f"block {i}" for i in range(depth)], "matrix": layers.tolist()}}
        # the encoder being evaluated is not its own reference (a battery lists both words for both runs)
        refs = [r for r in self.params.references if r != ctx.encoder]
        if refs:
            names, reps = [f"this [{ctx.encoder}]"], [blocks[-1]]
            for ref in refs:
                name, rep = self._reference(ctx, ref, pooling)
                names.append(name)
                reps.append(rep)
            models = cka_matrix(reps)
            details["models"] = {"labels": names, "matrix": models.tolist()}
            for name, value in zip(names[1:], models[0, 1:]):
                metrics[f"cka_vs_{name}"] = float(value)
        return TaskResult(metrics=metrics, details=details)
