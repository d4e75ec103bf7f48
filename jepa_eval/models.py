"""I-JEPA networks built from timm: the encoder *is* a timm ``VisionTransformer``; the predictor is
timm ``Block``s with the official parameter names, so official state dicts load without renaming."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import nn
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer

# Heads cannot be read from weights; the I-JEPA variants by width (docs/protocols.md §1).
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
VARIANTS = {  # name: (width, depth, heads, mlp_ratio)
    "vit_tiny": (192, 12, 3, 4.0), "vit_small": (384, 12, 6, 4.0), "vit_base": (768, 12, 12, 4.0),
    "vit_large": (1024, 24, 16, 4.0), "vit_huge": (1280, 32, 16, 4.0), "vit_giant": (1408, 40, 16, 48 / 11),
}
LN_EPS = 1e-6


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed MAE-style 2-D sin-cos position embedding, [grid*grid, dim] (half the channels per axis)."""
    def axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    # MAE's order: the first half of the channels encodes the column index, the second the row index.
    emb = np.concatenate([axis(dim // 2, cols), axis(dim // 2, rows)], axis=1)
    return torch.from_numpy(emb).float()


def gather_tokens(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """Keep the tokens named by each [B, K] index tensor; the lists are concatenated along the batch."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).expand(-1, -1, x.size(-1))) for m in masks], dim=0)


class JEPAViT(VisionTransformer):
    """timm ViT without cls token or head, fixed sin-cos positions, and the official masked forward.

    ``forward(x)`` returns all patch tokens after the final norm, [B, N, D]. ``forward(x, masks=[idx])``
    gathers the masked tokens after adding positions and before the blocks, like the official encoder.
    Other input sizes resample the position grid without assuming a cls token."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, **kwargs) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, class_token=False,
                         num_classes=0, global_pool="", dynamic_img_size=True,
                         norm_layer=partial(nn.LayerNorm, eps=LN_EPS), **kwargs)
        grid = self.patch_embed.grid_size[0]
        self.pos_embed.data.copy_(sincos_pos_embed_2d(embed_dim, grid).unsqueeze(0))
        self.pos_embed.requires_grad_(False)

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))  # timm resamples pos_embed for other sizes (no prefix tokens)
        if masks is not None:
            x = gather_tokens(x, masks if isinstance(masks, (list, tuple)) else [masks])
        x = self.blocks(x)
        return self.norm(x)

    def forward_last_blocks(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Tokens of each of the last ``n`` blocks, each passed through the final norm (concatPOOL4)."""
        x = self._pos_embed(self.patch_embed(x))
        outs, first = [], len(self.blocks) - n
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= first:
                outs.append(self.norm(x))
        return outs


class JEPAPredictor(nn.Module):
    """The I-JEPA predictor: narrow ViT over context tokens plus one mask token per target position.

    Parameter names follow the official checkpoints (``predictor_embed``, ``mask_token``,
    ``predictor_pos_embed``, ``predictor_blocks``, ``predictor_norm``, ``predictor_proj``)."""

    def __init__(self, num_patches: int, embed_dim: int = 768, predictor_embed_dim: int = 384,
                 depth: int = 6, num_heads: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        grid = int(math.isqrt(num_patches))
        self.predictor_pos_embed = nn.Parameter(
            sincos_pos_embed_2d(predictor_embed_dim, grid).unsqueeze(0), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=LN_EPS)
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(depth))
        self.predictor_norm = norm(predictor_embed_dim)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim, bias=True)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, masks_x: list[torch.Tensor] | torch.Tensor,
                masks: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Context tokens [B*len(masks_x), K, D] -> predictions [B*len(masks_x)*len(masks), K_tgt, D],
        target-mask-major, exactly like the official predictor."""
        masks_x = list(masks_x) if isinstance(masks_x, (list, tuple)) else [masks_x]
        masks = list(masks) if isinstance(masks, (list, tuple)) else [masks]
        batch = x.size(0) // len(masks_x)
        pos = self.predictor_pos_embed.expand(batch, -1, -1)
        x = self.predictor_embed(x) + gather_tokens(pos, masks_x)
        n_ctx = x.size(1)
        tgt_pos = gather_tokens(pos, masks)  # [len(masks)*B, K_tgt, d], target-mask-major
        # each target-mask block of B rows is repeated for every context mask
        tgt_pos = torch.cat([blk for blk in tgt_pos.split(batch) for _ in range(len(masks_x))], dim=0)
        x = torch.cat([x.repeat(len(masks), 1, 1), self.mask_token + tgt_pos], dim=1)
        for blk in self.predictor_blocks:
            x = blk(x)
        return self.predictor_proj(self.predictor_norm(x)[:, n_ctx:])


def build_encoder(width: int, depth: int, patch_size: int, img_size: int, num_heads: int | None = None,
                  mlp_ratio: float = 4.0) -> JEPAViT:
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        from .errors import UserError
        raise UserError(f"cannot infer the number of heads for width {width}; pass num_heads=")
    return JEPAViT(img_size=img_size, patch_size=patch_size, embed_dim=width, depth=depth,
                   num_heads=heads, mlp_ratio=mlp_ratio)


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resample a [1, G*G, D] grid with no prefix tokens (the official code wrongly assumes a cls token)."""
    old = int(math.isqrt(pos_embed.shape[1]))
    return resample_abs_pos_embed(pos_embed, new_size=(new_grid, new_grid), old_size=(old, old),
                                  num_prefix_tokens=0)
