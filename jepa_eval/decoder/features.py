"""Conditioning vectors and the pixels they describe.

``region`` mode (the I-JEPA setting): for each target block of the pretraining mask collator, the
target encoder's tokens of that block are average-pooled into the conditioning vector, and the block's
bounding box, cut from the image and resized to the decoder's resolution, is what the decoder learns to
draw. ``image`` mode pools all tokens and draws the whole image. The decoder's resolution is independent
of the encoder's input size: boxes are cut from the encoder-sized image and resampled (bilinear)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
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


@torch.no_grad()
def conditioning_batch(encoder: nn.Module, images: torch.Tensor, targets: list[torch.Tensor], patch: int,
                       size: int, condition: str = "region") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's training pairs for a batch of encoder-sized, normalized images.

    Returns (conditioning [M, D], pixels in [-1, 1] [M, 3, size, size], boxes [M, 4]) with M = B x number
    of target masks in ``region`` mode (target-mask-major, like the predictor) and M = B in ``image`` mode."""
    tokens = encoder(images)
    unit = to_unit(images) * 2 - 1
    if condition == "image":
        h, w = images.shape[-2:]
        boxes = images.new_tensor([[0, 0, w, h]]).expand(len(images), 4).float()
        pix = F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return tokens.mean(1), pix, boxes
    grid_w = images.shape[-1] // patch
    cond = torch.cat([pool_tokens(tokens, m) for m in targets])
    boxes = torch.cat([block_boxes(m, grid_w, patch) for m in targets])
    pix = crop_boxes(unit.repeat(len(targets), 1, 1, 1), boxes, size)
    return cond, pix, boxes
