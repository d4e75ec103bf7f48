"""Training monitors: label-free signs of learning or collapse, measured on a fixed held batch.

Every ``monitor.every`` steps (and once before the first step) the target encoder, context encoder and
predictor are run on the same held images, drawn once with their own seed (never from the training
stream, never through the global RNG), in eval mode under ``no_grad``. The global RNG state and every
module's train/eval flag are restored afterwards, so a run with monitors ends with bit-identical weights
to one without them (tests/test_monitors.py).

Columns (written to ``train-log.csv``; empty on rows without a measurement):

- ``rankme``: RankMe (effective rank) of the mean-pooled target features; falls when features collapse.
- ``feat_std``: mean over dimensions of the std over images of the mean-pooled target features.
- ``input_dep``: input dependence of the target tokens, see ``input_dependence``.
- ``pred_std_ratio``: spread of the predictor's outputs over the spread of its (layer-normed) targets,
  see ``prediction_std_ratio``.
- ``knn``: with ``monitor.knn``, online k-NN top-1 (k = ``monitor.knn_k``, cosine) of pooled target
  features: a labelled bank of training images classifies the held batch."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jepa_eval.analysis import rankme
from jepa_eval.errors import UserError
from jepa_eval.models import gather_tokens
from jepa_eval.masks import MultiBlockMaskCollator

from .config import MonitorConfig
from .data import SeededRandomResizedCrop

MONITOR_COLUMNS = ["rankme", "feat_std", "input_dep", "pred_std_ratio", "knn"]


# ---------------------------------------------------------------- the measures, on plain tensors
def input_dependence(tokens: torch.Tensor) -> float:
    """How much the tokens depend on the image rather than on the patch position.

    ``tokens`` [B, N, D]. Numerator: the variance over the B images of the token at a fixed position,
    averaged over positions and dimensions. Denominator: the variance over the N positions of the tokens
    of one image, averaged over images and dimensions. 0 when every image gives the same tokens (constant
    images, or features that only encode position); about 1 when images vary as much as positions do;
    0 as well when the output is entirely constant (no variance anywhere), inf when only images vary."""
    t = tokens.double()
    across_images = float(t.var(0, unbiased=False).mean())
    across_positions = float(t.var(1, unbiased=False).mean())
    if across_positions <= 0:
        return 0.0 if across_images <= 0 else float("inf")
    return across_images / across_positions


def pooled_std(pooled: torch.Tensor) -> float:
    """Mean over dimensions of the std over images of pooled features [B, D] (0 = collapsed)."""
    return float(pooled.double().std(0, unbiased=False).mean())


def prediction_std_ratio(pred: torch.Tensor, target: torch.Tensor) -> float:
    """std of predicted tokens over std of their targets, each taken per dimension over all predicted
    tokens ([M, K, D] flattened to [M*K, D]) and averaged over dimensions. Near 0: the predictor outputs
    nearly the same vector everywhere (it predicts the mean); near 1: as varied as the targets."""
    p, t = pred.reshape(-1, pred.size(-1)).double(), target.reshape(-1, target.size(-1)).double()
    denom = t.std(0, unbiased=False).mean()
    return float(p.std(0, unbiased=False).mean() / denom) if denom > 0 else 0.0


# ---------------------------------------------------------------- state isolation
@contextmanager
def isolated(*models: nn.Module) -> Iterator[None]:
    """Eval mode, no grad, and a forked RNG; every module's flag and the RNG state are restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for model in models:
            model.eval()
        try:
            yield
        finally:
            for m, was in flags:
                m.training = was


def _inner(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _forward(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([model(b) for b in x.split(chunk)])


# ---------------------------------------------------------------- the monitor
class TrainingMonitor:
    """Holds the fixed images and masks; ``measure(...)`` returns the column values, ``check(...)``
    a one-line collapse warning (at most once per run)."""

    def __init__(self, cfg: MonitorConfig, dataset, img_size: int, patch_size: int, mask_cfg,
                 device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        base = dataset.base if hasattr(dataset, "base") else dataset
        # small datasets (tests, digits) get smaller held sets rather than an error
        n_images = min(cfg.images, len(base) // 2 if cfg.knn else len(base))
        n_bank = min(cfg.knn_bank, len(base) - n_images) if cfg.knn else 0
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(cfg.seed))
        order = order[:n_images + n_bank].tolist()
        # the whole image, resized: a fixed crop (scale 1, square) of the training transform
        view = SeededRandomResizedCrop(img_size, scale=(1.0, 1.0), ratio=(1.0, 1.0))

        def load(idx: list[int]) -> torch.Tensor:
            return torch.stack([view(base.load_image(i).convert("RGB"), 0) for i in idx]).to(device)

        self.images = load(order[:n_images])
        self.labels = self.bank = self.bank_labels = None
        if cfg.knn:
            targets = getattr(base, "targets", None)
            if targets is None:
                raise UserError("monitor.knn (--monitor-knn) needs a labelled dataset")
            self.labels = np.asarray(targets)[order[:n_images]]
            self.bank = load(order[n_images:])
            self.bank_labels = np.asarray(targets)[order[n_images:]]
        n_pred = min(cfg.pred_images, n_images)
        sampler = MultiBlockMaskCollator(img_size, patch_size, mask_cfg, seed=cfg.seed)
        enc, pred = sampler.sample(n_pred)  # its own generator: the training sampler is untouched
        self.masks_enc = [m.to(device) for m in enc]
        self.masks_pred = [m.to(device) for m in pred]
        self.reference: dict[str, float] | None = None  # step-0 values
        self.warned = False

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def measure(self, encoder: nn.Module, predictor: nn.Module, target: nn.Module) -> dict[str, float]:
        encoder, predictor = _inner(encoder), _inner(predictor)
        out: dict[str, float] = {}
        with isolated(encoder, predictor, target):
            tokens = _forward(target, self.images).float()
            pooled = tokens.mean(1)
            finite = bool(torch.isfinite(tokens).all())
            out["rankme"] = rankme(pooled.cpu().numpy()) if finite else float("nan")
            out["feat_std"] = pooled_std(pooled)
            out["input_dep"] = input_dependence(tokens)
            n = self.masks_enc[0].size(0)
            h = F.layer_norm(tokens[:n], (tokens.size(-1),))
            h = gather_tokens(h, self.masks_pred)
            if len(self.masks_enc) > 1:  # the predictor repeats each target block per context mask
                h = torch.cat([blk for blk in h.split(n) for _ in range(len(self.masks_enc))])
            z = predictor(encoder(self.images[:n], self.masks_enc), self.masks_enc, self.masks_pred)
            out["pred_std_ratio"] = prediction_std_ratio(z.float(), h)
            if self.cfg.knn and finite:
                from jepa_eval.probes.knn import knn_eval
                bank = _forward(target, self.bank).float().mean(1)
                k = self.cfg.knn_k
                out["knn"] = knn_eval(bank.cpu().numpy(), self.bank_labels, pooled.cpu().numpy(), self.labels,
                                      ks=(k,), verbose=False)[k]
        return out

    def check(self, step: int, values: dict[str, float]) -> str | None:
        """The warning line, the first time the values show collapse; None otherwise."""
        if self.reference is None:
            self.reference = dict(values)
            return None
        if self.warned:
            return None
        reasons = []
        r0, r = self.reference.get("rankme"), values.get("rankme")
        if r0 and r is not None and (not np.isfinite(r) or r < self.cfg.rankme_drop * r0):
            reasons.append(f"RankMe {r:.1f} < {self.cfg.rankme_drop:g} x its step-0 value {r0:.1f}")
        dep = values.get("input_dep")
        if dep is not None and dep < self.cfg.min_input_dep:
            reasons.append(f"input dependence {dep:.3g} < {self.cfg.min_input_dep:g} (targets ignore the image)")
        if not reasons:
            return None
        self.warned = True
        return f"jepa-eval pretrain: WARNING: representation collapse at step {step}: {'; '.join(reasons)}"


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
