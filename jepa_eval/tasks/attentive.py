"""Attentive probe (V-JEPA style) on frozen patch tokens, selected on a training hold-out."""
from __future__ import annotations

from dataclasses import dataclass

from ..probes.attentive import AttentiveConfig, attentive_probe
from ..task import Task, TaskContext, TaskResult, probe_config, register_task


@register_task("attentive")
class AttentiveTask(Task):
    """Attentive probe (V-JEPA) on frozen patch tokens, lr/wd selected on a 10 % training hold-out."""
    poolings = accepts = ("tokens",)
    single_pooling = True
    pooling_note = "the attentive probe reads patch tokens"
    primary = "top1"
    classification = True

    @dataclass
    class Params(AttentiveConfig):          # the probe's own fields, plus the task's
        holdout_fraction: float = 0.1

        def config(self, seed: int) -> AttentiveConfig:
            return probe_config(self, AttentiveConfig, seed)

        def validate(self) -> str | None:
            if not 0 < self.holdout_fraction < 0.5:
                return "holdout_fraction must be in (0, 0.5)"
            return self.config(0).validate()

    def run(self, ctx: TaskContext) -> TaskResult:
        train, test = ctx.features("train", "tokens"), ctx.features("test", "tokens")
        p = self.params
        res = attentive_probe(train.x, train.y, test.x, test.y, p.config(ctx.seed),
                              max(len(train.classes), int(train.y.max()) + 1), p.holdout_fraction, ctx.workdir,
                              ctx.device, lambda it, desc: ctx.progress(it, desc))
        metrics = {"top1": res.top1, **({"top5": res.top5} if res.top5 is not None else {})}
        return TaskResult(metrics=metrics, chosen={**res.chosen, "epochs": p.epochs},
                          selected_on=f"train-holdout-{round(100 * p.holdout_fraction)}%",
                          details={"holdout_top1": res.holdout_top1, "grid": res.grid,
                                   "n_train": len(train.y), "n_test": len(test.y)})
