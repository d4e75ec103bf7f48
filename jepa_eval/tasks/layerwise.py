"""Per-block probing: k-NN (or a fixed logistic regression) on the pooled output of every block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..probes import knn_eval
from ..task import Task, TaskContext, TaskResult, register_task

if TYPE_CHECKING:
    from ..report.figures import ReportFigure


def _linear_top1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=seed))
    clf.fit(train_x, train_y)
    return 100.0 * float((clf.predict(test_x) == test_y).mean())


@register_task("layerwise")
class LayerwiseTask(Task):
    """Accuracy of every transformer block's mean-pooled output (blocksPOOL features)."""
    poolings = accepts = ("blocksPOOL",)
    single_pooling = True
    pooling_note = "layerwise reads per-block features"
    primary = "top1_last"   # the last block: picking the best block on the test split would be selection
    classification = True

    @dataclass
    class Params:
        probe: str = "knn"         # knn | linear
        k: int = 20
        temperature: float = 0.07
        C: float = 1.0             # linear only; fixed, not selected (the curve's shape is the point)

        def validate(self) -> str | None:
            if self.probe not in ("knn", "linear"):
                return "probe must be 'knn' or 'linear'"
            if self.k < 1 or self.temperature <= 0 or self.C <= 0:
                return "k, temperature and C must be positive"
            return None

    def check(self, sizes: dict[str, int], class_counts: dict[str, list[int]]) -> str | None:
        n = sizes.get("train", 0)   # the same rule as the k-NN task: refused, never clamped
        if self.params.probe == "knn" and self.params.k > n:
            return f"k {self.params.k} exceeds the {n} training images; lower it or use more training images"
        return None

    def run(self, ctx: TaskContext) -> TaskResult:
        pooling = ctx.poolings[0]
        train, test = ctx.features("train", pooling), ctx.features("test", pooling)
        p = self.params
        curve = []
        for block in ctx.progress(range(train.x.shape[1]), desc=f"layerwise {p.probe}"):
            tr = np.asarray(train.x[:, block], dtype=np.float32)
            te = np.asarray(test.x[:, block], dtype=np.float32)
            if p.probe == "knn":
                acc = knn_eval(tr, train.y, te, test.y, ks=[p.k], temperature=p.temperature, verbose=False)[p.k]
            else:
                acc = _linear_top1(tr, train.y, te, test.y, p.C, ctx.seed)
            curve.append(acc)
        # the primary number is the last block: picking the best block on the test split would be selection
        metrics = {"top1_last": curve[-1], **{f"top1_block{i}": v for i, v in enumerate(curve)}}
        return TaskResult(metrics=metrics, pooling=pooling, details={
            "probe": p.probe, "blocks": list(range(len(curve))), "top1": curve,
            "n_train": len(train.y), "n_test": len(test.y)})

    @classmethod
    def figures(cls, records: list[dict[str, Any]]) -> list[ReportFigure]:
        """Per-block accuracy curves, one panel per entry."""
        from ..report.figures import ReportFigure, grid, png, short
        recs = [r for r in records if r.get("details", {}).get("top1")]
        if not recs:
            return []
        entries = list(dict.fromkeys(r["entry"] for r in recs))
        fig, axes = grid(len(entries))
        for ax, entry in zip(axes, entries):
            mine = [r for r in recs if r["entry"] == entry]
            for r in mine:
                d = r["details"]
                ax.plot(d["blocks"], d["top1"], marker="o", label=short(f"{r['checkpoint']['name']} [{r['encoder']}]"))
            ax.set_xlabel("block")
            ax.set_ylabel(f"top-1 ({mine[0]['details'].get('probe', 'knn')}) %")
            ax.set_title(f"{entry} on {mine[0]['dataset']}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return [ReportFigure("layerwise", "Accuracy of every block",
                             "Mean-pooled tokens of each block (after the final norm), probed separately.", png(fig))]
