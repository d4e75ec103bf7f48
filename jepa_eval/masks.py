"""I-JEPA multi-block masking (docs/protocols.md §2): one context block and several target blocks per image.

Block *sizes* are drawn once per batch, block *positions* per image; the context block excludes every
target block; all masks of a batch are cut to the shortest so they stack into [B, K] index tensors.
The sampler's only state is its step counter, so resuming restores it exactly.

``MaskConfig.kind`` selects the masking of the ablation (benchmarks/mask_ablation.py):
``multiblock`` (the release), ``single_block`` (one target block, ``npred: 1``, with the context block
outside it: the same code path) and ``random`` (scattered patches: every batch first draws the
multi-block masks, then replaces them per image by random patches with the same shapes; the context
keeps exactly as many tokens, each target as many, and no target patch is in the context)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate


@dataclass
class MaskConfig:
    enc_mask_scale: tuple[float, float] = (0.85, 1.0)
    pred_mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    nenc: int = 1
    npred: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    kind: str = "multiblock"           # multiblock | random | single_block (the masking ablation)

    def validate(self) -> str | None:
        for name in ("enc_mask_scale", "pred_mask_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                return f"{name} {[lo, hi]} must be (min, max) with 0 < min <= max <= 1"
        if not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            return f"aspect_ratio {list(self.aspect_ratio)} must be (min, max) with 0 < min <= max"
        if self.nenc < 1 or self.npred < 1:
            return "nenc and npred must be >= 1"
        if self.min_keep < 0:
            return "min_keep must be >= 0"
        if self.kind not in MASK_KINDS:
            return f"mask.kind must be one of {', '.join(MASK_KINDS)}, got '{self.kind}'"
        if self.kind == "single_block" and self.npred != 1:
            return f"mask.kind single_block predicts one target block: set mask.npred to 1 (got {self.npred})"
        if self.kind == "random" and (self.nenc != 1 or self.allow_overlap):
            return "mask.kind random needs mask.nenc 1 and allow_overlap false"
        return None


MASK_KINDS = ("multiblock", "random", "single_block")


class MultiBlockMaskCollator:
    """``collator(batch) -> (collated_batch, masks_enc, masks_pred)``, lists of [B, K] LongTensors."""

    def __init__(self, input_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 config: MaskConfig | None = None, seed: int = 0) -> None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.height, self.width = size[0] // patch_size, size[1] // patch_size
        self.cfg = config or MaskConfig()
        if self.cfg.min_keep > self.height * self.width:
            raise ValueError(f"min_keep={self.cfg.min_keep} exceeds the {self.height}x{self.width} patch grid")
        self.seed = seed
        self.step = 0  # the sampler's whole state: see state_dict()

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seed = int(state["step"]), int(state["seed"])

    def _block_size(self, g: torch.Generator, scale: tuple[float, float],
                    aspect: tuple[float, float]) -> tuple[int, int]:
        r = torch.rand(1, generator=g).item()
        keep = int(self.height * self.width * (scale[0] + r * (scale[1] - scale[0])))
        ar = math.exp(math.log(aspect[0]) + r * (math.log(aspect[1]) - math.log(aspect[0])))
        h = min(max(int(round(math.sqrt(keep * ar))), 1), self.height)
        w = min(max(int(round(math.sqrt(keep / ar))), 1), self.width)
        return h, w

    def _block(self, g: torch.Generator, size: tuple[int, int],
               allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One block at a random position, restricted to ``allowed`` (a [H, W] 0/1 map) when given.

        A restricted block must keep more than ``min_keep`` tokens; after 20 tries the largest one seen
        is taken. Unlike the official sampler, the restriction is never dropped, so a context block never
        overlaps a target block (on small grids the official fallback would leak targets into the context)."""
        h, w = size
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for tries in range(1000):
            top = int(torch.randint(0, self.height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, self.width - w + 1, (1,), generator=g))
            block = torch.zeros(self.height, self.width, dtype=torch.int32)
            block[top:top + h, left:left + w] = 1
            complement = 1 - block
            if allowed is None:
                return torch.nonzero(block.flatten()).squeeze(-1), complement
            idx = torch.nonzero((block * allowed).flatten()).squeeze(-1)
            if len(idx) > self.cfg.min_keep:
                return idx, complement
            if best is None or len(idx) > len(best[0]):
                best = idx, complement
            if tries >= 19 and len(best[0]) > 0:
                return best
        raise RuntimeError("could not sample a context block outside the target blocks; "
                           "lower the target mask scales or their number")

    def sample(self, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        self.step += 1
        cfg = self.cfg
        pred_size = self._block_size(g, cfg.pred_mask_scale, cfg.aspect_ratio)
        enc_size = self._block_size(g, cfg.enc_mask_scale, (1.0, 1.0))
        enc, pred = [], []
        for _ in range(batch_size):
            targets, allowed = [], None
            for _ in range(cfg.npred):
                idx, complement = self._block(g, pred_size, None)
                targets.append(idx)
                allowed = complement if allowed is None else allowed * complement
            if cfg.allow_overlap:
                allowed = None
            contexts = [self._block(g, enc_size, allowed)[0] for _ in range(cfg.nenc)]
            pred.append(targets)
            enc.append(contexts)
        masks_enc, masks_pred = self._stack(enc), self._stack(pred)
        if cfg.kind == "random":
            return self._random_like(g, masks_enc, masks_pred)
        return masks_enc, masks_pred

    def _random_like(self, g: torch.Generator, masks_enc: list[torch.Tensor],
                     masks_pred: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Random patches with the shapes of the multi-block masks: per image, a random context of
        K_ctx patches, and each target K_tgt random patches of the rest (targets may share patches with
        one another, like overlapping blocks, never with the context)."""
        n = self.height * self.width
        batch, k_ctx = masks_enc[0].shape
        k_tgt = masks_pred[0].size(1)
        if k_ctx + k_tgt > n:
            raise RuntimeError(f"random masks: {k_ctx} context + {k_tgt} target patches exceed the {n}-patch grid")
        enc, pred = [], [[] for _ in masks_pred]
        for _ in range(batch):
            perm = torch.randperm(n, generator=g)
            enc.append(perm[:k_ctx].sort().values)
            rest = perm[k_ctx:]
            for targets in pred:
                targets.append(rest[torch.randperm(len(rest), generator=g)[:k_tgt]].sort().values)
        return [torch.stack(enc)], [torch.stack(t) for t in pred]

    @staticmethod
    def _stack(per_image: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        keep = min(len(m) for masks in per_image for m in masks)
        n = len(per_image[0])
        return [torch.stack([masks[j][:keep] for masks in per_image]) for j in range(n)]

    def __call__(self, batch: list) -> tuple[object, list[torch.Tensor], list[torch.Tensor]]:
        masks_enc, masks_pred = self.sample(len(batch))
        return default_collate(batch), masks_enc, masks_pred
