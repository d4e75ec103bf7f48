"""Conditioning vectors and the pixels they describe.

``region`` mode (the I-JEPA setting): for a target block of the pretraining mask collator, the
target encoder's tokens of that block are average-pooled into the conditioning vector and the block's
bounding box is what the decoder learns to fill: it sees the image with the box blanked plus the box mask
(``inpaint_context``). ``image`` mode pools all tokens and draws the whole image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..datasets.base import IMAGENET_MEAN, IMAGENET_STD


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized images -> [0, 1]."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalized (the encoder's input)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pool_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of the tokens named by ``idx`` [B, K]: [B, N, D] -> [B, D]."""
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.size(-1))).mean(1)


def block_boxes(idx: torch.Tensor, grid_w: int, patch: int) -> torch.Tensor:
    """Pixel bounding boxes (x1, y1, x2, y2) of the patches named by ``idx`` [B, K] -> [B, 4] float.
    The collator may cut a block's index list short, so the box is the bounding box of what is left."""
    rows, cols = idx // grid_w, idx % grid_w
    return torch.stack([cols.min(1).values * patch, rows.min(1).values * patch,
                        (cols.max(1).values + 1) * patch, (rows.max(1).values + 1) * patch], dim=1).float()


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut each box out of its image and resample it to ``size`` x ``size`` (one batched roi_align)."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(images, rois.to(images.dtype), output_size=(size, size), sampling_ratio=-1, aligned=True)


def paste_boxes(images: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Put each crop back into its box (resized to the box), returning new images."""
    out = images.clone()
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        out[i, :, y1:y2, x1:x2] = F.interpolate(crops[i:i + 1], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                antialias=True, align_corners=False)[0]
    return out


def box_mask(boxes: torch.Tensor, offset: int, scale: float, size: int) -> torch.Tensor:
    """[B, 1, size, size] float mask, 1 inside each encoder-pixel box mapped to decoder pixels."""
    b = (boxes * scale + offset).round().long()
    ys = torch.arange(size, device=boxes.device).view(1, size, 1)
    xs = torch.arange(size, device=boxes.device).view(1, 1, size)
    inside = (ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None]) & (xs >= b[:, 0, None, None]) \
        & (xs < b[:, 2, None, None])
    return inside.unsqueeze(1).float()


def inpaint_context(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the region (inpainting) decoder sees: the image with the box set to 0 (mid gray), then the mask."""
    return torch.cat([x * (1 - mask), mask], dim=1)
