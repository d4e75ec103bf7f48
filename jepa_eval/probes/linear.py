"""Linear probing with a whole grid of heads trained at once.

Every head of {linear, BatchNorm + linear} x learning rates x weight decays lives in one stacked weight
tensor, so one mini-batch updates all of them with a single batched matmul and the features are read
once per epoch. The BatchNorm is MAE's (``affine=False``, eps 1e-6): its output does not depend on the
head, so it is computed once per batch and shared by every BN head. Heads are selected on a seeded
hold-out of the *training* split; the test split is only ever scored for the selected head."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .stream import chunk_rows, epoch_batches, holdout_split, iter_blocks, load_state, save_state
from .whiten import Whitening

NORMS = ("none", "bn")
INPUTS = ("raw", "whitened")      # what the grid is trained on; "whitened": see probes/whiten.py
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]   # epoch -> (x, y) mini-batches


@dataclass
class LinearConfig:
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    wds: list[float] = field(default_factory=lambda: [0.0, 5e-4, 5e-3])
    norms: list[str] = field(default_factory=lambda: list(NORMS))
    epochs: int = 20
    batch_size: int = 256
    momentum: float = 0.9
    schedule: str = "cosine"          # or "step": lr / 10 every 15 epochs (the I-JEPA paper)
    seed: int = 0
    inputs: list[str] = field(default_factory=lambda: ["raw"])   # + "whitened": the grid again on whitened features
    shrinkage: float = 1e-6           # whitening: covariance + shrinkage * (mean eigenvalue) * identity
    nesterov: bool = False            # Nesterov momentum (VISSL's CLEVR probes)
    lr_end_factor: float = 0.0        # cosine ends at lr * this (VISSL CLEVR: 0.01 -> 1e-4, i.e. 0.01)

    def validate(self) -> str | None:
        if not self.lrs or min(self.lrs) <= 0:
            return "lrs must be a non-empty list of positive numbers"
        if not self.wds or min(self.wds) < 0:
            return "wds must be a non-empty list of non-negative numbers"
        if not self.norms or any(n not in NORMS for n in self.norms) or len(set(self.norms)) != len(self.norms):
            return f"norms must be distinct values from {list(NORMS)}"
        if self.epochs < 1 or self.batch_size < 2:
            return "epochs must be >= 1 and batch_size >= 2"
        if not 0 <= self.momentum < 1:
            return "momentum must be in [0, 1)"
        if not self.inputs or any(i not in INPUTS for i in self.inputs) or len(set(self.inputs)) != len(self.inputs):
            return f"inputs must be distinct values from {list(INPUTS)}"
        if not 0 < self.shrinkage < 1:
            return "shrinkage must be in (0, 1)"
        if not 0 <= self.lr_end_factor < 1 or (self.lr_end_factor and self.schedule != "cosine"):
            return "lr_end_factor must be in [0, 1) and needs the cosine schedule"
        return None if self.schedule in ("cosine", "step") else "schedule must be 'cosine' or 'step'"

    def heads(self) -> list[dict[str, float | str]]:
        """The grid in the order of the model's heads (norm-major, then lr, then wd)."""
        return [{"norm": n, "lr": lr, "wd": wd} for n in self.norms for lr in self.lrs for wd in self.wds]


class HeadGrid(nn.Module):
    """G input norms x L (lr, wd) pairs of linear heads: weight [G, D, L, C], bias [G, L, C]."""

    def __init__(self, dim: int, n_classes: int, norms: list[str], n_per_norm: int) -> None:
        super().__init__()
        self.norms = list(norms)
        self.shape = (len(norms), dim, n_per_norm, n_classes)
        self.weight = nn.Parameter(torch.zeros(self.shape))
        self.bias = nn.Parameter(torch.zeros(len(norms), n_per_norm, n_classes))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as each norm group sees it, [G, B, D] (in training, BatchNorm uses and updates batch stats)."""
        return torch.stack([x if n == "none" else F.batch_norm(x, self.running_mean, self.running_var,
                                                               training=self.training, momentum=0.1, eps=1e-6)
                            for n in self.norms])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head, [H, B, C] with H = G * L in ``LinearConfig.heads`` order."""
        g, d, l, c = self.shape
        logits = torch.bmm(self.inputs(x), self.weight.view(g, d, l * c)).view(g, -1, l, c)
        return (logits + self.bias[:, None]).transpose(1, 2).reshape(g * l, -1, c)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place. torch's CPU kernel is 6-9x slower than three plain passes
    when that dimension is short and not a multiple of the vector width (2, 5, 10 classes: see
    benchmarks/head_grid.py); from 16 classes on it is the faster one."""
    if logits.shape[-1] >= 16:
        return torch.softmax(logits, dim=-1)
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


@torch.no_grad()
def _logit_gradients(model: HeadGrid, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [G, B, D], softmax minus one-hot [G, B, L, C]): the gradient of every head's *summed*
    cross-entropy with respect to its logits, with the inputs that multiply it."""
    g, d, l, c = model.shape
    inputs = model.inputs(x)                                                         # [G, B, D]
    logits = torch.baddbmm(model.bias.view(g, 1, l * c), inputs, model.weight.view(g, d, l * c))
    probs = _softmax_(logits.view(g, -1, l, c))
    probs[:, torch.arange(len(y), device=y.device), :, y] -= 1.0                    # one entry per (image, head)
    return inputs, probs


@torch.no_grad()
def grid_gradients(model: HeadGrid, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``model`` in training mode.) Gradients (weight [G, D, L, C], bias [G, L, C]) of every head's mean cross-entropy on one batch,
    written out by hand: softmax minus one-hot is the logits' gradient, and one batched matmul per norm
    group gives the weights'. Autograd would add a log-softmax backward pass and its temporaries.
    (``fit_grid`` fuses the weight gradient into its momentum update instead of materializing it.)"""
    g, d, l, c = model.shape
    inputs, probs = _logit_gradients(model, x, y)
    grad_w = torch.bmm(inputs.transpose(1, 2), probs.view(g, -1, l * c)).div_(len(y)).view(model.shape)
    return grad_w, probs.sum(1).div_(len(y))


def _lr_factor(cfg: LinearConfig, progress: float) -> float:
    if cfg.schedule == "step":
        return 0.1 ** int(progress // 15)
    cosine = 0.5 * (1 + math.cos(math.pi * progress / cfg.epochs))
    return cfg.lr_end_factor + (1 - cfg.lr_end_factor) * cosine


@torch.no_grad()
def _momentum_step(model: HeadGrid, buf_w: torch.Tensor, buf_b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   momentum: float, lr_w: torch.Tensor, wd_w: torch.Tensor, lr_b: torch.Tensor, factor: float) -> None:
    """One step of ``torch.optim.SGD`` (momentum, L2 weight decay on the weights) for every head, in place:
    buf = momentum * buf + grad + wd * W; W -= lr * factor * buf. The weight gradient is never materialized:
    the matmul that computes it accumulates straight into the momentum buffer (GEMM beta), so the grid makes
    three passes over its weights per step instead of nine."""
    g, d, l, c = model.shape
    inputs, probs = _logit_gradients(model, x, y)
    buf_w.view(g, d, l * c).baddbmm_(inputs.transpose(1, 2), probs.view(g, -1, l * c), beta=momentum,
                                     alpha=1.0 / len(y))
    buf_w.addcmul_(wd_w, model.weight)
    buf_b.mul_(momentum).add_(probs.sum(1), alpha=1.0 / len(y))
    model.weight.addcmul_(lr_w, buf_w, value=-factor)
    model.bias.addcmul_(lr_b, buf_b, value=-factor)


@torch.no_grad()
def _nesterov_step(model: HeadGrid, buf_w: torch.Tensor, buf_b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   momentum: float, lr_w: torch.Tensor, wd_w: torch.Tensor, lr_b: torch.Tensor, factor: float) -> None:
    """As ``_momentum_step`` with Nesterov's momentum (``torch.optim.SGD(nesterov=True)``):
    step = grad + wd * W + momentum * buf (the gradient tensors are reused for it)."""
    grad_w, grad_b = grid_gradients(model, x, y)
    grad_w.addcmul_(wd_w, model.weight)
    buf_w.mul_(momentum).add_(grad_w)
    buf_b.mul_(momentum).add_(grad_b)
    model.weight.addcmul_(lr_w, grad_w.add_(buf_w, alpha=momentum), value=-factor)
    model.bias.addcmul_(lr_b, grad_b.add_(buf_b, alpha=momentum), value=-factor)


def fit_grid(dim: int, n_classes: int, batches: Batches, n_fit: int, cfg: LinearConfig,
             device: torch.device | str = "cpu", state_path: Path | None = None,
             progress: Callable[[Iterable, str], Iterable] | None = None,
             on_epoch_end: Callable[[int], None] | None = None) -> HeadGrid:
    """Train every head of the grid with SGD + momentum, optionally Nesterov's as in ``torch.optim.SGD`` (per-head
    lr; L2 weight decay on the weights, not the biases).
    ``batches(epoch)`` yields one pass of mini-batches; after each epoch the state is saved to
    ``state_path`` so a restarted call continues from the last finished epoch."""
    device = torch.device(device)
    per_norm = [(lr, wd) for lr in cfg.lrs for wd in cfg.wds]
    model = HeadGrid(dim, n_classes, cfg.norms, len(per_norm)).to(device)
    lr = torch.tensor([p[0] for p in per_norm], device=device)
    wd = torch.tensor([p[1] for p in per_norm], device=device)
    lr_w, wd_w, lr_b = lr[None, None, :, None], wd[None, None, :, None], lr[None, :, None]
    buf_w, buf_b = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    config = {**asdict(cfg), "dim": dim, "n_classes": n_classes, "n_fit": n_fit}
    start = 0
    state = load_state(state_path, config)
    if state is not None:
        model.load_state_dict(state["model"])
        buf_w, buf_b = state["buf_w"].to(device), state["buf_b"].to(device)
        start = state["epoch"]
    steps = max(1, math.ceil(n_fit / cfg.batch_size))
    epochs: Iterable[int] = range(start, cfg.epochs)
    if progress is not None:
        epochs = progress(epochs, "linear heads")
    step = _nesterov_step if cfg.nesterov else _momentum_step
    for epoch in epochs:
        model.train()
        for i, (xb, yb) in enumerate(batches(epoch)):
            factor = _lr_factor(cfg, epoch + min(i / steps, 1.0))
            step(model, buf_w, buf_b, xb.float(), yb, cfg.momentum, lr_w, wd_w, lr_b, factor)
        if not torch.isfinite(model.weight).all(dim=(1, 3)).any():
            raise UserError("every linear head diverged (NaN); lower the learning rates")
        if state_path is not None:
            save_state(state_path, {"config": config, "epoch": epoch + 1, "model": model.state_dict(),
                                    "buf_w": buf_w.cpu(), "buf_b": buf_b.cpu()})
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return model.eval()


@torch.no_grad()
def grid_scores(model: HeadGrid, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None,
                device: torch.device | str = "cpu", chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-5 accuracy (percent) of every head on ``rows`` of the features, streamed by chunk.
    A diverged head (non-finite weights) scores 0."""
    model.eval()
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        raise UserError("no rows to evaluate")
    correct1 = correct5 = 0
    for feats, sel in iter_blocks(x, rows, chunk or chunk_rows(x)):
        logits = model(torch.from_numpy(feats).to(device))
        logits = torch.nan_to_num(logits, nan=-torch.inf)
        truth = torch.from_numpy(np.asarray(y[sel], dtype=np.int64)).to(device)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices          # [H, B, k]
        hit = top == truth[None, :, None]
        correct1 = correct1 + hit[..., 0].sum(1).cpu()
        correct5 = correct5 + hit.any(-1).sum(1).cpu()
    finite = torch.isfinite(model.weight).all(1).all(-1).flatten() & torch.isfinite(model.bias).all(-1).flatten()
    finite = finite.cpu().numpy()
    top1 = 100.0 * np.asarray(correct1, dtype=np.float64) / len(rows)
    top5 = 100.0 * np.asarray(correct5, dtype=np.float64) / len(rows)
    return np.where(finite, top1, 0.0), np.where(finite, top5, 0.0)


@dataclass
class LinearProbeResult:
    top1: float
    top5: float | None
    chosen: dict[str, float | str]            # pooling, input, norm, lr, wd of the selected head
    holdout_top1: float
    grid: list[dict[str, float | str]]         # every head with its hold-out top-1


def cached_batches(x: np.ndarray, y: np.ndarray, rows: np.ndarray, cfg: LinearConfig,
                   device: torch.device | str) -> Batches:
    chunk = max(chunk_rows(x), cfg.batch_size)
    return lambda epoch: epoch_batches(x, y, rows, cfg.batch_size, cfg.seed, epoch, chunk, torch.device(device))


def linear_probe(sets: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                 cfg: LinearConfig | None = None, n_classes: int | None = None, holdout_fraction: float = 0.1,
                 workdir: Path | None = None, device: torch.device | str = "cpu",
                 progress: Callable[[Iterable, str], Iterable] | None = None,
                 train_batches: Mapping[str, Callable[[np.ndarray], Batches]] | None = None,
                 on_epoch_end: Callable[[int], None] | None = None) -> LinearProbeResult:
    """Train a head grid per feature set (``{name: (train_x, train_y, test_x, test_y)}``) and per input in
    ``cfg.inputs`` (the raw features; "whitened": the same features PCA-whitened with statistics of the fit
    rows), select the best (feature set, input, head) on a seeded hold-out of the training rows, and score only
    that head on test. ``train_batches[name](fit_rows)`` may replace the cached-feature stream (e.g. augmented
    features)."""
    cfg = cfg or LinearConfig()
    problem = cfg.validate()
    if problem:
        raise UserError(problem)
    if not sets:
        raise UserError("linear probe needs at least one feature set")
    first_y = np.asarray(next(iter(sets.values()))[1])
    for name, (tx, ty, vx, vy) in sets.items():
        if len(tx) != len(ty) or len(vx) != len(vy):
            raise UserError(f"{name}: features and labels differ in length")
        if not np.array_equal(np.asarray(ty), first_y):
            raise UserError("all feature sets must share the same training labels")
    n_classes = n_classes or int(first_y.max()) + 1
    fit_rows, held_rows = holdout_split(first_y, holdout_fraction, cfg.seed)
    grid, models = [], {}
    for name, (raw_x, ty, _, _) in sets.items():
        for inp in cfg.inputs:
            white = Whitening.fit(raw_x, fit_rows, cfg.shrinkage) if inp == "whitened" else None
            tx = white.view(raw_x) if white else raw_x
            if train_batches and name in train_batches:
                make = train_batches[name](fit_rows)
                batches = (lambda epoch, make=make, white=white: white.batches(make(epoch))) if white else make
            else:
                batches = cached_batches(tx, ty, fit_rows, cfg, device)
            state = Path(workdir) / f"linear-{name}{'' if inp == 'raw' else '-' + inp}.pt" if workdir else None
            model = fit_grid(tx.shape[1], n_classes, batches, len(fit_rows), cfg, device, state, progress,
                             on_epoch_end)
            acc, _ = grid_scores(model, tx, ty, held_rows, device)
            grid += [{"pooling": name, "input": inp, **h, "holdout_top1": float(a)} for h, a in zip(cfg.heads(), acc)]
            models[name, inp] = model, white
    best = int(np.argmax([g["holdout_top1"] for g in grid]))          # first best on ties
    chosen = {k: v for k, v in grid[best].items() if k != "holdout_top1"}
    name, head = chosen["pooling"], best % len(cfg.heads())
    model, white = models[name, chosen["input"]]
    _, _, test_x, test_y = sets[name]
    top1, top5 = grid_scores(model, white.view(test_x) if white else test_x, test_y, None, device)
    return LinearProbeResult(top1=float(top1[head]), top5=float(top5[head]) if n_classes > 5 else None,
                             chosen=chosen, holdout_top1=grid[best]["holdout_top1"], grid=grid)
