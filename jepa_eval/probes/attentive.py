"""Attentive probe (V-JEPA style) on frozen patch tokens: one learned query cross-attends over the
tokens (timm's ``AttentionPoolLatent``: attention + residual MLP), then a linear head.

One probe per learning rate is trained in the same pass over the token features (each mini-batch
updates all of them); the probe is selected on a seeded hold-out of the training split and only the
selected one is scored on test. Epoch checkpoints make an interrupted run resume where it stopped."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent
from torch import nn

from ..errors import UserError
from ..seeding import seeded
from .stream import chunk_rows, epoch_batches, holdout_split, iter_blocks, load_state, save_state


@dataclass
class AttentiveConfig:
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-4])
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 128
    num_heads: int = 0            # 0: about width // 64, the largest such count dividing the width
    mlp_ratio: float = 4.0
    warmup_epochs: float = 1.0
    seed: int = 0

    def validate(self) -> str | None:
        if not self.lrs or min(self.lrs) <= 0:
            return "lrs must be a non-empty list of positive numbers"
        if self.weight_decay < 0 or self.epochs < 1 or self.batch_size < 1:
            return "weight_decay must be >= 0, epochs and batch_size >= 1"
        if self.num_heads < 0 or self.mlp_ratio <= 0 or self.warmup_epochs < 0:
            return "num_heads must be >= 0, mlp_ratio > 0, warmup_epochs >= 0"
        return None


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, n_classes: int, num_heads: int = 0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if not num_heads:  # the ViT convention (64 channels a head), lowered until it divides the width
            num_heads = max(1, dim // 64)
            while dim % num_heads:
                num_heads -= 1
        if dim % num_heads:
            raise UserError(f"num_heads={num_heads} does not divide the token width {dim}")
        self.pool = AttentionPoolLatent(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(tokens))


@dataclass
class AttentiveResult:
    top1: float
    top5: float | None
    chosen: dict[str, float]
    holdout_top1: float
    grid: list[dict[str, float]]


@torch.no_grad()
def _scores(models: list[nn.Module], x: np.ndarray, y: np.ndarray, rows: np.ndarray,
            device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    top1, top5 = np.zeros(len(models)), np.zeros(len(models))
    for m in models:
        m.eval()
    for feats, sel in iter_blocks(x, rows, chunk_rows(x)):
        z = torch.from_numpy(feats).to(device)
        truth = torch.from_numpy(np.asarray(y[sel], dtype=np.int64)).to(device)
        for i, m in enumerate(models):
            logits = torch.nan_to_num(m(z), nan=-torch.inf)
            hit = logits.topk(min(5, logits.shape[-1]), -1).indices == truth[:, None]
            top1[i] += int(hit[:, 0].sum())
            top5[i] += int(hit.any(-1).sum())
    return 100.0 * top1 / len(rows), 100.0 * top5 / len(rows)


def attentive_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                    cfg: AttentiveConfig | None = None, n_classes: int | None = None,
                    holdout_fraction: float = 0.1, workdir: Path | None = None,
                    device: torch.device | str = "cpu",
                    progress: Callable[[Iterable, str], Iterable] | None = None,
                    on_epoch_end: Callable[[int], None] | None = None) -> AttentiveResult:
    """Train attentive probes on token features [N, T, D] (memory maps are streamed by chunk), select
    the learning rate on the training hold-out, report the selected probe's test top-1 (and top-5)."""
    cfg = cfg or AttentiveConfig()
    problem = cfg.validate()
    if problem:
        raise UserError(problem)
    if train_x.ndim != 3 or test_x.ndim != 3:
        raise UserError("the attentive probe needs token features [N, T, D] (pooling: tokens)")
    device = torch.device(device)
    train_y = np.asarray(train_y, dtype=np.int64)
    n_classes = n_classes or int(train_y.max()) + 1
    fit_rows, held_rows = holdout_split(train_y, holdout_fraction, cfg.seed)
    with seeded(cfg.seed):   # timm's init draws from the global RNG; the caller's stream is left alone
        models = [AttentiveProbe(train_x.shape[-1], n_classes, cfg.num_heads, cfg.mlp_ratio) for _ in cfg.lrs]
    models = [m.to(device) for m in models]
    opts = [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=cfg.weight_decay) for m, lr in zip(models, cfg.lrs)]
    config = {**asdict(cfg), "shape": list(train_x.shape[1:]), "n_classes": n_classes, "n_fit": len(fit_rows)}
    state_path = Path(workdir) / "attentive.pt" if workdir else None
    start = 0
    state = load_state(state_path, config)
    if state is not None:
        for m, o, ms, os_ in zip(models, opts, state["models"], state["opts"]):
            m.load_state_dict(ms)
            o.load_state_dict(os_)
        start = state["epoch"]
    steps = max(1, math.ceil(len(fit_rows) / cfg.batch_size))
    chunk = max(chunk_rows(train_x), cfg.batch_size)
    epochs: Iterable[int] = range(start, cfg.epochs)
    if progress is not None:
        epochs = progress(epochs, "attentive probes")
    for epoch in epochs:
        for m in models:
            m.train()
        for i, (xb, yb) in enumerate(epoch_batches(train_x, train_y, fit_rows, cfg.batch_size, cfg.seed,
                                                    epoch, chunk, device)):
            t = epoch + min(i / steps, 1.0)
            cosine_span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
            factor = (t / cfg.warmup_epochs if t < cfg.warmup_epochs
                      else 0.5 * (1 + math.cos(math.pi * (t - cfg.warmup_epochs) / cosine_span)))
            for m, o, lr in zip(models, opts, cfg.lrs):
                for group in o.param_groups:
                    group["lr"] = lr * factor
                loss = F.cross_entropy(m(xb), yb)
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()
        if state_path is not None:
            save_state(state_path, {"config": config, "epoch": epoch + 1,
                                    "models": [m.state_dict() for m in models],
                                    "opts": [o.state_dict() for o in opts]})
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    held1, _ = _scores(models, train_x, train_y, held_rows, device)
    best = int(np.argmax(held1))
    top1, top5 = _scores([models[best]], test_x, test_y, np.arange(len(test_x)), device)
    grid = [{"lr": lr, "holdout_top1": float(a)} for lr, a in zip(cfg.lrs, held1)]
    return AttentiveResult(float(top1[0]), float(top5[0]) if n_classes > 5 else None,
                           {"lr": cfg.lrs[best], "weight_decay": cfg.weight_decay}, float(held1[best]), grid)
