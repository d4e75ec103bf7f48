"""Linear CKA between the blocks of one encoder and between encoders/checkpoints (same images)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis import cka_matrix
from ..task import Task, TaskContext, TaskResult, register_task

if TYPE_CHECKING:
    from ..report.figures import ReportFigure

MAX_HEATMAPS = 9   # panels in the report's CKA figure; the rest are counted in its caption


@register_task("cka")
class CKATask(Task):
    """Linear CKA heatmaps: block x block of this encoder, and this encoder vs reference checkpoints."""
    splits = ("train",)
    poolings = accepts = ("blocksPOOL",)
    single_pooling = True
    pooling_note = "cka reads per-block features"
    primary = "cka_first_last"
    figure_rank = 1   # the heatmaps come after the per-block accuracy curves

    @dataclass
    class Params:
        # checkpoint specs to compare with (their target encoder), or the words 'target'/'context'
        # for that encoder of this checkpoint (skipped when it is the one being evaluated)
        references: list[str] = field(default_factory=list)

    def _reference(self, ctx: TaskContext, ref: str, pooling: str) -> tuple[str, np.ndarray]:
        from ..checkpoint import checkpoint_name, load_checkpoint
        if ref in ("target", "context"):
            ck, encoder, name = ctx.checkpoint, ref, f"this [{ref}]"
        else:
            ck, encoder, name = load_checkpoint(ref), "target", f"{checkpoint_name(ref)} [target]"
        feats = ctx.cache.get_or_extract(ck, encoder, pooling, ctx.dataset("train"), dtype=ctx.feature_dtype,
                                         device=ctx.device, progress=ctx.show_progress)
        return name, np.asarray(feats.x[:, -1], dtype=np.float64)

    def run(self, ctx: TaskContext) -> TaskResult:
        pooling = ctx.poolings[0]
        feats = ctx.features("train", pooling)
        blocks = [np.asarray(feats.x[:, i], dtype=np.float64) for i in range(feats.x.shape[1])]
        layers = cka_matrix(blocks)
        depth = len(blocks)
        metrics = {"cka_first_last": float(layers[0, -1]),
                   "cka_adjacent_mean": float(np.mean([layers[i, i + 1] for i in range(depth - 1)]))
                   if depth > 1 else 1.0}
        details = {"n": len(blocks[0]),
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
        return TaskResult(metrics=metrics, details=details, pooling=pooling)

    @classmethod
    def figures(cls, records: list[dict[str, Any]]) -> list[ReportFigure]:
        """Heatmaps of linear CKA (block x block, and against reference checkpoints)."""
        import re

        from ..report.figures import ReportFigure, grid, png, short
        panels = []
        for kind in ("layers", "models"):  # every block x block map first, then the model comparisons
            for r in (r for r in records if kind in r.get("details", {})):
                name = f"{r['checkpoint']['name']} [{r['encoder']}]"
                panels.append((f"{short(name, 30)}: {kind}", r["details"][kind]))
        if not panels:
            return []
        shown = panels[:MAX_HEATMAPS]
        fig, axes = grid(len(shown), width=4.6, height=4.0)
        for ax, (title, data) in zip(axes, shown):
            m = np.asarray(data["matrix"], dtype=float)
            im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            labels = [re.sub(r"^block ", "", lab) for lab in data["labels"]]
            ax.set_xticks(range(len(labels)), [short(lab, 16) for lab in labels], rotation=60, fontsize=7, ha="right")
            ax.set_yticks(range(len(labels)), [short(lab, 16) for lab in labels], fontsize=7)
            ax.set_title(title, fontsize=9)
            if len(m) <= 8:
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            fig.colorbar(im, ax=ax, shrink=0.8)
        more = f" ({len(panels) - len(shown)} more not drawn)" if len(panels) > len(shown) else ""
        return [ReportFigure("cka", "Linear CKA",
                             "Linear CKA of mean-pooled block outputs on the same images (1 = same up to rotation "
                             f"and scale){more}.", png(fig))]
