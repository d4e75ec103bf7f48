"""Expose any timm model through the encoder interface: images -> patch tokens [B, N, D]."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import UserError


class TimmTokens(nn.Module):
    """Wraps a timm model so that ``forward`` returns patch tokens after the final norm (prefix tokens
    such as cls/registers dropped; CNN feature maps flattened to tokens)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def _tokens(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 4:  # NCHW feature map
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.num_prefix_tokens:]

    def forward(self, x: torch.Tensor, masks: Any = None) -> torch.Tensor:
        if masks is not None:
            raise ValueError("masked forward is only defined for I-JEPA encoders")
        return self._tokens(self.model.forward_features(x))

    def forward_last_blocks(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        if not hasattr(self.model, "forward_intermediates"):
            raise UserError(f"{type(self.model).__name__} has no forward_intermediates: use lastPOOL")
        fmt = {"output_fmt": "NLC"} if hasattr(self.model, "blocks") else {}
        feats = self.model.forward_intermediates(x, indices=n, norm=True, intermediates_only=True, **fmt)
        # timm already dropped the prefix tokens here; only CNN maps need flattening
        return [f.flatten(2).transpose(1, 2) if f.ndim == 4 else f for f in feats]

    def describe(self) -> dict[str, Any]:
        m = self.model
        pe = getattr(m, "patch_embed", None)
        img = getattr(pe, "img_size", None) or m.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
        patch = getattr(pe, "patch_size", (None,))
        return {"width": int(getattr(m, "num_features", 0) or getattr(m, "embed_dim", 0)),
                "depth": len(getattr(m, "blocks", [])) or None,
                "heads": getattr(getattr(m, "blocks", [None])[0], "attn", None) and m.blocks[0].attn.num_heads,
                "patch_size": patch[0] if patch else None, "img_size": int(img[0]),
                "epoch": None, "has_predictor": False, "has_target_encoder": False,
                "has_context_encoder": False}


class PixelTokens(nn.Module):
    """Raw pixels through the encoder interface: one token holding the whole flattened image, so
    ``lastPOOL`` is the image itself. It has a single "block": concatPOOLn equals lastPOOL."""

    def forward(self, x: torch.Tensor, masks: Any = None) -> torch.Tensor:
        if masks is not None:
            raise ValueError("masked forward is only defined for I-JEPA encoders")
        return x.flatten(1).unsqueeze(1)

    def forward_last_blocks(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        return [self.forward(x)]
