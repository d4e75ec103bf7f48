"""End-to-end fine-tuning of an encoder on a small labelled subset (the I-JEPA paper's ImageNet-1% row).

The recipe is MAE's fine-tuning recipe (He et al. 2022, appendix A.2 and ``main_finetune.py``), which the
I-JEPA paper (appendix, low-shot) says it follows, with mixup and cutmix off as in its low-shot setting:

- AdamW (betas 0.9/0.999), weight decay 0.05, no decay on 1-D parameters (biases, norms) nor on position
  embeddings / class tokens (timm ``param_groups_layer_decay`` through ``create_optimizer_v2``);
- layer-wise lr decay 0.75: head and final norm x1, block i of L x 0.75^(L - i), patch/position embedding
  x 0.75^(L + 1) (MAE ``lr_decay.py``; the same layout timm's helper gives here);
- peak lr = blr x batch_size / 256 (MAE's convention), linear warmup over 5 epochs from 0, then half-cycle
  cosine to 1e-6, set every step (timm ``CosineLRScheduler`` with ``warmup_prefix``);
- label smoothing 0.1 (timm ``LabelSmoothingCrossEntropy``, MAE's loss when mixup is off);
- train transform = timm ``create_transform`` as MAE builds it: RandomResizedCrop (0.08-1, bicubic),
  flip, RandAugment ``rand-m9-mstd0.5-inc1``, normalize, RandomErasing 0.25 (pixel mode);
- stochastic depth (drop-path), rates rising linearly over the blocks to ``drop_path``
  (MAE: 0.1 ViT-B, 0.2 ViT-L, 0.3 ViT-H);
- batch 512, 50 epochs (the paper's 1% setting); the lr/wd per model are in the paper's appendix and not
  reproduced here: they are parameters;
- head: MAE's global pool - the mean of the last block's patch tokens, then a LayerNorm (MAE's
  ``fc_norm``; here it starts from the encoder's pretrained final norm), then a linear layer initialised
  with std 2e-5. ``head="lastPOOL"`` instead keeps the final norm on every token before the mean (the
  frozen evaluations' lastPOOL). I-JEPA has no cls token; a timm ViT's prefix tokens are left out.

Determinism: the batches of an epoch come from a permutation seeded by (seed, run, epoch), each image's
augmentation from a generator seeded by (seed, run, epoch, position), and the dropout/drop-path draws of a
step from (seed, run, step). With the model and optimizer saved every ``checkpoint_every`` steps, a run
stopped anywhere resumes to the same weights, bit for bit on the CPU."""
from __future__ import annotations

import copy
import hashlib
import math
import os
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..seeding import seeded
from .stream import holdout_split, load_state, save_state

HEADS = ("mae", "lastPOOL")


@dataclass
class FinetuneConfig:
    blrs: list[float] = field(default_factory=lambda: [1e-3])   # MAE base lrs (per 256 images); >1: selected
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.2
    label_smoothing: float = 0.1
    epochs: int = 50
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    batch_size: int = 512
    micro_batch: int = 0             # > 0: gradient accumulation in chunks of this many images
    rand_augment: str = "rand-m9-mstd0.5-inc1"   # timm RandAugment spec; "" turns it off
    re_prob: float = 0.25            # RandomErasing probability (MAE default)
    head: str = "mae"
    checkpoint_every: int = 0        # steps between saved states; 0: once per epoch
    seed: int = 0

    def validate(self) -> str | None:
        if not self.blrs or min(self.blrs) <= 0:
            return "blrs must be a non-empty list of positive numbers"
        if self.weight_decay < 0 or not 0 < self.layer_decay <= 1:
            return "weight_decay must be >= 0 and layer_decay in (0, 1]"
        if not 0 <= self.drop_path < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.re_prob <= 1:
            return "drop_path and label_smoothing must be in [0, 1), re_prob in [0, 1]"
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch < 0 or self.checkpoint_every < 0:
            return "epochs and batch_size must be >= 1, micro_batch and checkpoint_every >= 0"
        if not 0 <= self.warmup_epochs < self.epochs or self.min_lr < 0:
            return "warmup_epochs must be in [0, epochs) and min_lr >= 0"
        if self.head not in HEADS:
            return f"head must be one of {', '.join(HEADS)}, not '{self.head}'"
        if self.rand_augment and not self.rand_augment.startswith("rand-"):
            return f"rand_augment must be a timm RandAugment spec like 'rand-m9-mstd0.5-inc1', not '{self.rand_augment}'"
        return None

    def lr(self, blr: float) -> float:
        return blr * self.batch_size / 256


def _vit(encoder: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` inside an encoder (I-JEPA encoders are one; timm specs wrap one)."""
    from timm.models.vision_transformer import VisionTransformer
    vit = getattr(encoder, "model", encoder)
    if not isinstance(vit, VisionTransformer):
        raise UserError(f"fine-tuning needs a ViT encoder (I-JEPA or a timm VisionTransformer), "
                        f"not {type(encoder).__name__}")
    return vit


class FinetuneNet(nn.Module):
    """A copy of the encoder with a pooled classification head (see the module docstring)."""

    def __init__(self, encoder: nn.Module, n_classes: int, head: str = "mae", drop_path: float = 0.0) -> None:
        super().__init__()
        from timm.layers import DropPath, trunc_normal_
        self.vit = copy.deepcopy(_vit(encoder))       # a shared checkpoint object is never modified
        self.vit.requires_grad_(True)                 # MAE fine-tunes the position embedding too
        self.pool = head
        rates = np.linspace(0, drop_path, len(self.vit.blocks))
        for blk, rate in zip(self.vit.blocks, rates):
            blk.drop_path1 = DropPath(float(rate)) if rate > 0 else nn.Identity()
            blk.drop_path2 = DropPath(float(rate)) if rate > 0 else nn.Identity()
        self.head = nn.Linear(self.vit.embed_dim, n_classes)
        trunc_normal_(self.head.weight, std=2e-5)     # MAE main_finetune.py
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        x = v.blocks(x)[:, v.num_prefix_tokens:]
        z = v.norm(x.mean(1)) if self.pool == "mae" else v.norm(x).mean(1)
        return self.head(z)

    # layer-wise lr decay groups read by timm's param_groups_layer_decay: the final norm and the head share
    # the top group (x1), as in MAE's lr_decay.py (timm's own ViT matcher folds the norm into the last block)
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^vit\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
                    blocks=r"^vit\.blocks\.(\d+)", top=r"^(?:vit\.norm\.|head\.)")

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}


def make_optimizer(net: FinetuneNet, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(net, opt="adamw", lr=lr, weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay, betas=(0.9, 0.999))


def make_scheduler(opt: torch.optim.Optimizer, cfg: FinetuneConfig, lr: float, steps_per_epoch: int):
    """Per-step warmup + cosine; ``step_update(step)`` sets each group's lr times its ``lr_scale``."""
    from timm.scheduler import CosineLRScheduler
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    return CosineLRScheduler(opt, t_initial=max(total - warm, 1), lr_min=cfg.min_lr, warmup_t=warm,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize, with 0 bits kept meaning a black image as Pillow < 12 did (newer Pillow raises;
    RandAugment reaches 0 bits whenever the sampled magnitude rounds to 10)."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    return Image.new(img.mode, img.size) if bits_to_keep <= 0 else ImageOps.posterize(img, bits_to_keep)


def train_transform(size: int, cfg: FinetuneConfig) -> Callable:
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment
    tf = create_transform(size, is_training=True, color_jitter=None, auto_augment=cfg.rand_augment or None,
                          interpolation="bicubic", re_prob=cfg.re_prob, re_mode="pixel", re_count=1)
    for t in getattr(tf, "transforms", []):
        for op in t.ops if isinstance(t, RandAugment) else []:
            if "Posterize" in op.name:
                op.aug_fn = _posterize
    return tf


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (timm's augmentations use all three); restore them afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with seeded(seed):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _mix(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


class _Items(torch.utils.data.Dataset):
    """Rows of an image dataset under a transform; each item's randomness is seeded by its key."""

    def __init__(self, ds: Any, items: list[tuple[int, tuple[int, ...]]], transform: Callable) -> None:
        self.ds, self.items, self.transform = ds, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        row, key = self.items[k]
        image = self.ds.load_image(row).convert("RGB")
        with _seeded(_mix(*key)):
            x = self.transform(image)
        return x, int(self.ds.targets[row])


def _loader(ds: Any, items: list, transform: Callable, batch: int, device: torch.device, seed: int = 0):
    """Items in order. Starting its iteration draws the workers' base seed; from a local generator it leaves
    the caller's RNG alone (the images do not depend on it: every item seeds its own augmentation)."""
    cuda = device.type == "cuda"
    workers = min(8, os.cpu_count() or 1) if cuda else 0
    return torch.utils.data.DataLoader(_Items(ds, items, transform), batch_size=batch, shuffle=False,
                                       num_workers=workers, pin_memory=cuda,
                                       generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate(net: nn.Module, ds: Any, rows: np.ndarray, device: torch.device, batch: int = 256,
             transform: Callable | None = None) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of ``net`` on ``rows`` of ``ds`` under its evaluation transform."""
    net.eval()
    hits1 = hits5 = 0
    cuda = device.type == "cuda"
    for x, y in _loader(ds, [(int(r), (0,)) for r in rows], transform or ds.transform, batch, device):
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            logits = net(x.to(device, non_blocking=cuda)).float()
        top = logits.topk(min(5, logits.shape[-1]), -1).indices.cpu() == y[:, None]
        hits1 += int(top[:, 0].sum())
        hits5 += int(top.any(-1).sum())
    return 100.0 * hits1 / len(rows), 100.0 * hits5 / len(rows)


def train(net: FinetuneNet, ds: Any, rows: np.ndarray, cfg: FinetuneConfig, blr: float, run: int,
          image_size: int, device: torch.device, state_path: Path | None = None,
          progress: Callable[[Iterable, str], Iterable] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune ``net`` in place on ``rows`` of ``ds``; resumes from ``state_path`` when it holds a state
    of this same run. Returns the training loss of every step."""
    from timm.loss import LabelSmoothingCrossEntropy
    rows = np.asarray(rows, dtype=np.int64)
    batch = min(cfg.batch_size, len(rows))             # a subset smaller than a batch is one batch
    spe = max(1, len(rows) // cfg.batch_size)          # drop_last, as MAE's training loader
    total = cfg.epochs * spe
    lr = cfg.lr(blr)
    net.to(device)
    opt = make_optimizer(net, cfg, lr)
    sched = make_scheduler(opt, cfg, lr, spe)
    crit = LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing > 0 else nn.CrossEntropyLoss()
    config = {**asdict(cfg), "blr": blr, "run": run, "image_size": image_size, "rows": _digest(rows)}
    start, losses = 0, []
    state = load_state(state_path, config)
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses = int(state["step"]), list(state["losses"])
    every = cfg.checkpoint_every or spe
    tf = train_transform(image_size, cfg)
    micro = cfg.micro_batch or batch
    cuda = device.type == "cuda"

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in range(start // spe, cfg.epochs):
            order = np.random.default_rng([cfg.seed, run, epoch]).permutation(len(rows))[:spe * batch]
            first = (start - epoch * spe) * batch if epoch == start // spe else 0
            items = [(int(rows[order[k]]), (cfg.seed, run, epoch, k)) for k in range(first, len(order))]
            yield from _loader(ds, items, tf, batch, device, _mix(cfg.seed, run, epoch, 3))

    feed = batches()
    steps: Iterable[int] = range(start, total)
    if progress is not None:
        steps = progress(steps, f"fine-tune run {run} (lr {lr:.3g})")
    for step in steps:
        net.train()
        images, labels = next(feed)
        sched.step_update(step)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        with seeded(_mix(cfg.seed, run, step, 1)):   # timm's drop-path draws of this step
            for i in range(0, len(labels), micro):
                x = images[i:i + micro].to(device, non_blocking=cuda)
                y = labels[i:i + micro].to(device, non_blocking=cuda)
                with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                    logits = net(x)
                loss = crit(logits.float(), y) * (len(y) / len(labels))
                loss.backward()
                loss_sum += float(loss.detach())
        if not math.isfinite(loss_sum):
            raise UserError(f"fine-tuning diverged at step {step} (loss {loss_sum}); lower the learning rate")
        opt.step()
        losses.append(loss_sum)
        done = step + 1
        if state_path is not None and (done % every == 0 or done == total):
            save_state(state_path, {"config": config, "step": done, "losses": losses,
                                    "model": net.state_dict(), "opt": opt.state_dict()})
        if on_step is not None:
            on_step(done, loss_sum)
    return losses


@dataclass
class FinetuneResult:
    top1: float
    top5: float | None
    chosen: dict[str, Any]
    selected_on: str | None
    grid: list[dict[str, float]]
    losses: list[float]
    schedule: dict[str, Any]


def finetune(encoder: nn.Module, train_ds: Any, rows: np.ndarray, test_ds: Any, cfg: FinetuneConfig,
             n_classes: int, image_size: int, holdout_fraction: float = 0.1, workdir: Path | None = None,
             device: torch.device | str = "cpu", progress: Callable[[Iterable, str], Iterable] | None = None,
             on_step: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Fine-tune ``encoder`` on ``rows`` of ``train_ds`` and score it once on all of ``test_ds``.

    With several ``blrs`` each is fine-tuned on the subset minus a stratified hold-out of it, the best
    hold-out top-1 is chosen (never the test split), and the final model is fine-tuned on the whole subset
    with that value. Each run keeps its own resumable state in ``workdir``."""
    problem = cfg.validate()
    if problem:
        raise UserError(problem)
    device = torch.device(device)
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(train_ds.targets)[rows]
    workdir = Path(workdir) if workdir else None

    def fresh(run: int) -> FinetuneNet:
        with seeded(_mix(cfg.seed, run, 0, 2)):   # the head's init
            return FinetuneNet(encoder, n_classes, cfg.head, cfg.drop_path)

    grid, selected_on, blr = [], None, cfg.blrs[0]
    if len(cfg.blrs) > 1:
        fit, held = holdout_split(y, holdout_fraction, cfg.seed)
        selected_on = f"train-subset-holdout-{round(100 * holdout_fraction)}%"
        for run, cand in enumerate(cfg.blrs, start=1):
            done_path = workdir / f"run{run}-holdout.pt" if workdir else None
            config = {**asdict(cfg), "blr": cand, "run": run, "rows": _digest(rows[fit])}
            finished = load_state(done_path, config)
            if finished is None:
                net = fresh(run)
                state_path = workdir / f"run{run}.pt" if workdir else None
                train(net, train_ds, rows[fit], cfg, cand, run, image_size, device, state_path, progress, on_step)
                acc, _ = evaluate(net, train_ds, rows[held], device, cfg.micro_batch or cfg.batch_size)
                finished = {"config": config, "holdout_top1": acc}
                if done_path is not None:
                    save_state(done_path, finished)
                    state_path.unlink(missing_ok=True)   # weights of a finished candidate are not needed
            grid.append({"blr": cand, "lr": cfg.lr(cand), "holdout_top1": float(finished["holdout_top1"])})
        blr = grid[int(np.argmax([g["holdout_top1"] for g in grid]))]["blr"]   # ties: the first listed
    net = fresh(0)
    losses = train(net, train_ds, rows, cfg, blr, 0, image_size, device,
                   workdir / "run0.pt" if workdir else None, progress, on_step)
    top1, top5 = evaluate(net, test_ds, np.arange(len(test_ds)), device, cfg.micro_batch or cfg.batch_size)
    spe = max(1, len(rows) // cfg.batch_size)
    schedule = {"steps_per_epoch": spe, "total_steps": cfg.epochs * spe,
                "warmup_steps": int(round(cfg.warmup_epochs * spe)), "batch_size": min(cfg.batch_size, len(rows)),
                "optimizer": "AdamW(0.9, 0.999)", "lr_schedule": "linear warmup from 0, half-cycle cosine to min_lr"}
    chosen = {"blr": blr, "lr": cfg.lr(blr), "weight_decay": cfg.weight_decay, "layer_decay": cfg.layer_decay,
              "drop_path": cfg.drop_path, "label_smoothing": cfg.label_smoothing, "epochs": cfg.epochs,
              "head": cfg.head}
    return FinetuneResult(top1, top5 if n_classes > 5 else None, chosen, selected_on, grid, losses, schedule)
