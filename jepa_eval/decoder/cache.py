"""Representations extracted once: the target encoder runs over the training images a single time and
the decoder trains from this file (``reps.npz`` in the decoder folder), never running the encoder.

Arrays: ``pixels`` uint8 [N, C, h, w] at the encoder's input size, or at the decoder's when that is
smaller (224-px ImageNet images would not fit in memory), C = 1 when every image is gray;
``labels`` [N], ``pooled`` float32 [N, D] (lastPOOL: mean of the final-norm tokens), and in region mode
``tokens`` float16 [N, T, D] so that any block can be pooled later. ``key`` names checkpoint and data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_np_savez
from .features import to_unit


def cache_key(ck: Any, dataset: Any, with_tokens: bool, size: int) -> str:
    return json.dumps({"checkpoint_sha256": ck.meta.get("sha256"), "dataset": getattr(dataset, "identity", {}),
                       "transform": getattr(dataset, "transform_id", None), "n": len(dataset),
                       "tokens": with_tokens, "size": size}, sort_keys=True, default=str)


def is_gray(unit: torch.Tensor, tol: float = 2e-3) -> bool:
    """True when the three channels of [B, 3, H, W] images in [0, 1] are equal (grayscale data)."""
    return bool((unit - unit[:, :1]).abs().max() <= tol)


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, T, D], pooled [B, D]) of encoder-sized normalized images."""
    tokens = encoder(images)
    return tokens, tokens.mean(1)


def to_uint8(unit: torch.Tensor, channels: int) -> np.ndarray:
    return (unit[:, :channels].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def build_cache(ck: Any, dataset: Any, path: Path, device: str, with_tokens: bool, size: int, batch: int = 256,
                log: Any = print) -> dict[str, np.ndarray]:
    """Load ``path`` when it was built from the same checkpoint, data and decoder size, else build it."""
    key = cache_key(ck, dataset, with_tokens, size)
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in z.files}
    encoder = ck.target_encoder.to(device).eval()
    pixels, pooled, tokens, labels = [], [], [], []
    # a local generator: starting the iteration draws a (here unused) worker seed, not from the caller's RNG
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False,
                                         generator=torch.Generator().manual_seed(0))
    for images, y in loader:
        unit = to_unit(images)
        if unit.shape[-1] > size or unit.shape[-2] > size:
            unit = F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels.append(unit)
        tok, pool = encode_images(encoder, images.to(device))
        pooled.append(pool.float().cpu())
        if with_tokens:
            tokens.append(tok.half().cpu())
        labels.append(y)
    unit = torch.cat(pixels)
    channels = 1 if is_gray(unit) else 3
    out = {"pixels": to_uint8(unit, channels), "labels": torch.cat(labels).numpy(),
           "pooled": torch.cat(pooled).numpy(), "key": np.array(key)}
    if with_tokens:
        out["tokens"] = torch.cat(tokens).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_np_savez(path, out)
    log(f"cached {len(unit)} representations ({channels} channel{'s' * (channels > 1)}) -> {path}")
    return out


def to_decoder(pixels: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, C, h, w] -> float [N, C, size, size] in [-1, 1]: centred and padded with black when the
    image is smaller than the decoder (28 -> 32), resampled when larger."""
    x = torch.as_tensor(pixels).float().div(127.5).sub(1)
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def from_decoder(x: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Inverse of ``to_decoder``: [-1, 1] [N, C, size, size] -> uint8 [N, h, w, C] (channels last)."""
    size = x.shape[-1]
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        x = x[..., top:top + h, left:left + w]
    else:
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def box_offset(h: int, size: int) -> tuple[int, float]:
    """(offset, scale) mapping encoder pixel coordinates to decoder pixel coordinates."""
    return ((size - h) // 2, 1.0) if h <= size else (0, size / h)
