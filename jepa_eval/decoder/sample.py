"""`jepa-eval decoder sample`: seeded samples with their controls, as arrays (docs/decoder.md).

Image mode: every picked image is decoded from its own pooled representation (``cond_true``) and, from the
same initial noise, from the representation of image ``perm[i]`` (``cond_other``), ``perm`` a derangement.
Predictor mode: one target block per image; the inpainting decoder fills the box from the predictor's
pooled output (``from_pred``), from the target encoder's pooled block (``from_true``) and from image
``perm[i]``'s target representation of the same block (``from_other``, the shuffled control)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..masks import MaskConfig, MultiBlockMaskCollator
from .cache import box_offset, encode_images, from_decoder, to_decoder, to_uint8
from .diffusion import ddim_sample
from .features import block_boxes, box_mask, inpaint_context, pool_tokens, to_unit
from .model import RCDMDecoder


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of 0..n-1 with no fixed point (a random cyclic shift of a random order)."""
    if n < 2:
        raise UserError("--n must be at least 2 (the control conditions each image on another one)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -int(rng.integers(1, n)))
    return perm


def check_pair(ck: Any, decoder: RCDMDecoder, mode: str) -> None:
    """The decoder must have been trained on this checkpoint's representations, in the right mode."""
    extra = decoder.spec.extra
    want = "region" if mode == "predictor" else "image"
    if decoder.spec.condition != want:
        raise UserError(f"--mode {mode} needs a decoder trained with condition: {want} "
                        f"(this one was trained with condition: {decoder.spec.condition})")
    if mode == "predictor" and ck.predictor is None:
        raise UserError("this checkpoint has no predictor (timm models and plain state dicts have none); "
                        "--mode predictor needs an I-JEPA checkpoint with encoder, predictor and target_encoder")
    if extra.get("checkpoint_sha256") and extra["checkpoint_sha256"] != ck.meta.get("sha256"):
        raise UserError(f"the decoder was trained on the representations of another checkpoint "
                        f"({extra.get('checkpoint')}); train one for this checkpoint")
    if decoder.spec.cond_dim != int(ck.meta["width"]):
        raise UserError(f"decoder expects {decoder.spec.cond_dim}-d representations, the checkpoint gives "
                        f"{ck.meta['width']}-d")


def pick_images(dataset: Any, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    if n > len(dataset):
        raise UserError(f"--n {n} exceeds the {len(dataset)} images of this split")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    items = [dataset[int(i)] for i in pick]
    return torch.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)


def real_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """Encoder-sized normalized images -> [0, 1] at the decoder's resolution when that is smaller."""
    unit = to_unit(images)
    if unit.shape[-1] > size or unit.shape[-2] > size:
        unit = F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return unit


def _draw(decoder: RCDMDecoder, cond: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
          context: torch.Tensor | None = None, batch: int = 100) -> torch.Tensor:
    outs = [ddim_sample(decoder, cond[i:i + batch], steps, guidance=guidance, noise=noise[i:i + batch],
                        context=None if context is None else context[i:i + batch])
            for i in range(0, len(cond), batch)]
    return torch.cat(outs)


@torch.no_grad()
def sample_image_mode(ck: Any, decoder: RCDMDecoder, dataset: Any, n: int, seed: int, ddim_steps: int = 50,
                      guidance: float = 0.0) -> dict[str, np.ndarray]:
    check_pair(ck, decoder, "image")
    device = next(decoder.parameters()).device
    images, labels = pick_images(dataset, n, seed)
    perm = derangement(n, seed)
    _, pooled = encode_images(ck.target_encoder.to(device).eval(), images.to(device))
    spec = decoder.spec
    unit = real_pixels(images, spec.size)
    h, w = unit.shape[-2:]
    # one initial noise per image, shared by its own and its shuffled conditioning
    noise = torch.randn((n, spec.channels, spec.size, spec.size), generator=torch.Generator().manual_seed(seed))
    out = {"images": to_uint8(unit, spec.channels).transpose(0, 2, 3, 1), "labels": labels,
           "perm": perm, "guidance": np.array(guidance, dtype=np.float32)}
    for g in sorted({0.0, float(guidance)}):
        suffix = "" if g == 0 else "_cfg"
        out[f"cond_true{suffix}"] = from_decoder(_draw(decoder, pooled, noise, ddim_steps, g), h, w)
        out[f"cond_other{suffix}"] = from_decoder(_draw(decoder, pooled[perm], noise, ddim_steps, g), h, w)
    return out


@torch.no_grad()
def predictor_conditions(ck: Any, images: torch.Tensor, masks: MaskConfig, seed: int) -> dict[str, torch.Tensor]:
    """Per image one context block and one target block from the pretraining collator (its own block
    sizes): predictor output and target representation of the block, pooled, and the block's box."""
    size, patch = images.shape[-1], int(ck.meta["patch_size"])
    collator = MultiBlockMaskCollator(size, patch, masks, seed=seed)
    device = images.device
    tokens = ck.target_encoder(images)
    pred, true, idxs = [], [], []
    for i, x in enumerate(images.split(1)):
        enc, tgt = collator.sample(1)
        ctx_idx, t_idx = enc[0].to(device), tgt[0].to(device)
        predicted = ck.predictor(ck.encoder(x, masks=[ctx_idx]), [ctx_idx], [t_idx])  # [1, K, D]
        pred.append(predicted.mean(1))
        true.append(pool_tokens(tokens[i:i + 1], t_idx))
        idxs.append(t_idx)
    boxes = torch.cat([block_boxes(m, size // patch, patch) for m in idxs])
    return {"pred": torch.cat(pred), "true": torch.cat(true), "boxes": boxes, "tokens": tokens,
            "idx": idxs}


@torch.no_grad()
def sample_predictor_mode(ck: Any, decoder: RCDMDecoder, dataset: Any, n: int, seed: int, ddim_steps: int = 50,
                          guidance: float = 0.0) -> dict[str, np.ndarray]:
    check_pair(ck, decoder, "predictor")
    device = next(decoder.parameters()).device
    for m in (ck.encoder, ck.target_encoder, ck.predictor):
        m.to(device).eval()
    images, labels = pick_images(dataset, n, seed)
    images = images.to(device)
    perm = derangement(n, seed)
    spec, enc_size = decoder.spec, images.shape[-1]
    masks = MaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.extra["masks"].items()})
    c = predictor_conditions(ck, images, masks, seed)
    # the other image's target representation of the SAME block positions
    other = torch.cat([pool_tokens(c["tokens"][int(j):int(j) + 1], c["idx"][i]) for i, j in enumerate(perm)])
    unit = to_uint8(real_pixels(images, spec.size), spec.channels)
    h, w = unit.shape[-2:]
    x0 = to_decoder(unit, spec.size).to(device)
    offset, scale = box_offset(enc_size, spec.size)
    mask = box_mask(c["boxes"], offset, scale, spec.size)
    context = inpaint_context(x0, mask)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {"images": unit.transpose(0, 2, 3, 1), "labels": labels, "perm": perm,
           "boxes": (c["boxes"] * scale).round().long().cpu().numpy(),   # in the pixels of ``images``
           "context": from_decoder(x0 * (1 - mask), h, w), "guidance": np.array(guidance, dtype=np.float32)}
    for g in sorted({0.0, float(guidance)}):
        suffix = "" if g == 0 else "_cfg"
        for name, cond in (("from_pred", c["pred"]), ("from_true", c["true"]), ("from_other", other)):
            smp = _draw(decoder, cond, noise, ddim_steps, g, context)
            out[name + suffix] = from_decoder(smp * mask + x0 * (1 - mask), h, w)  # the real image outside the box
    return out
