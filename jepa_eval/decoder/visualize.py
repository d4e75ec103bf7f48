"""What does the predictor predict? Decode its pooled output for a target box and compare with decodes
of the true target representation (the I-JEPA paper's Fig. 6 protocol, docs/protocols.md §4)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pretrain.masks import MaskConfig, MultiBlockMaskCollator

from ..errors import UserError
from .features import block_boxes, paste_boxes, pool_tokens, to_unit
from .model import RCDMDecoder
from .train import ddim_sample

GAP, HEADER = 4, 16
PRED_COLOR, TRUE_COLOR, BOX_COLOR = (40, 200, 40), (240, 150, 20), (40, 200, 40)


@dataclass
class Decoded:
    """Everything one figure row shows, for ``rows = images x targets``; images in [0, 1]."""
    images: torch.Tensor       # [R, 3, H, W] encoder-sized originals
    context: torch.Tensor      # [R, H, W] bool, pixels inside the context block
    boxes: torch.Tensor        # [R, 4] target boxes (x1, y1, x2, y2) in encoder pixels
    from_pred: torch.Tensor    # [R, S, 3, s, s] samples conditioned on the predictor's output
    from_true: torch.Tensor    # [R, S, 3, s, s] samples conditioned on the true target representation


def check_pair(ck: Any, decoder: RCDMDecoder) -> None:
    """The decoder must have been trained on this checkpoint's representations, in region mode."""
    extra = decoder.spec.extra
    if ck.predictor is None:
        raise UserError("this checkpoint has no predictor (timm models and plain state dicts have none); "
                        "visualize needs an I-JEPA checkpoint with encoder, predictor and target_encoder")
    if decoder.spec.condition != "region":
        raise UserError("visualize needs a decoder trained with condition: region")
    if extra.get("checkpoint_sha256") and extra["checkpoint_sha256"] != ck.meta.get("sha256"):
        raise UserError(f"the decoder was trained on the representations of another checkpoint "
                        f"({extra.get('checkpoint')}); train one for this checkpoint")
    if decoder.spec.cond_dim != int(ck.meta["width"]):
        raise UserError(f"decoder expects {decoder.spec.cond_dim}-d representations, the checkpoint gives "
                        f"{ck.meta['width']}-d")


@torch.no_grad()
def decode_predictions(ck: Any, decoder: RCDMDecoder, images: torch.Tensor, n_samples: int = 3,
                       n_targets: int = 1, ddim_steps: int = 50, seed: int = 0) -> Decoded:
    """For each image: one context block and ``n_targets`` target blocks from the pretraining collator;
    context encoder -> predictor -> average pool per target -> decoder, and the same from the target
    encoder's true representation of each target."""
    check_pair(ck, decoder)
    extra = decoder.spec.extra
    size, patch = images.shape[-1], int(ck.meta["patch_size"])
    grid = size // patch
    masks = MaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in extra["masks"].items()})
    if n_targets > masks.npred:
        raise UserError(f"--n-targets {n_targets} exceeds the {masks.npred} target blocks of the decoder's masks")
    collator = MultiBlockMaskCollator(size, patch, masks, seed=seed)
    device = next(decoder.parameters()).device
    rows_img, rows_ctx, conds_p, conds_t, boxes = [], [], [], [], []
    for x in images.to(device).split(1):
        enc, pred = collator.sample(1)  # one image at a time: every image gets its own block sizes
        ctx_idx, tgts = enc[0].to(device), [m.to(device) for m in pred[:n_targets]]
        ctx_tokens = ck.encoder(x, masks=[ctx_idx])
        predicted = ck.predictor(ctx_tokens, [ctx_idx], tgts)          # [n_targets, K, D]
        tokens = ck.target_encoder(x)
        conds_p.append(predicted.mean(1))
        conds_t.append(torch.cat([pool_tokens(tokens, m) for m in tgts]))
        boxes.append(torch.cat([block_boxes(m, grid, patch) for m in tgts]))
        keep = torch.zeros(grid * grid, dtype=torch.bool, device=device)
        keep[ctx_idx[0]] = True
        ctx_px = keep.view(1, 1, grid, grid).float()
        ctx_px = F.interpolate(ctx_px, scale_factor=patch, mode="nearest")[0, 0].bool()
        rows_img += [to_unit(x)[0]] * len(tgts)
        rows_ctx += [ctx_px] * len(tgts)
    cond_p, cond_t = torch.cat(conds_p), torch.cat(conds_t)
    cond = torch.cat([cond_p.repeat_interleave(n_samples, 0), cond_t.repeat_interleave(n_samples, 0)])
    g = torch.Generator(device).manual_seed(seed)
    samples = ddim_sample(decoder, cond.to(device), ddim_steps, g).add(1).div(2)
    samples = samples.view(2, len(cond_p), n_samples, *samples.shape[1:]).cpu()
    return Decoded(torch.stack(rows_img).cpu(), torch.stack(rows_ctx).cpu(), torch.cat(boxes).cpu(),
                   samples[0], samples[1])


def _up(img: torch.Tensor, panel: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(panel, panel), mode="nearest")[0]


def _to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray((img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def draw_figure(d: Decoded, path: str | Path, panel: int = 96) -> tuple[int, int]:
    """Rows: original | context (rest grayed) | target box | S predictor samples | S true samples.
    Samples are pasted, at panel resolution, into the target box of the context image. Returns (rows, cols)."""
    rows, s = len(d.images), d.from_pred.shape[1]
    cols = 3 + 2 * s
    canvas = Image.new("RGB", (cols * panel + (cols + 1) * GAP, HEADER + rows * panel + (rows + 1) * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ["original", "context", "target"] + [f"pred {i + 1}" for i in range(s)] + [f"true {i + 1}" for i in range(s)]
    for c, title in enumerate(titles):
        draw.text((GAP + c * (panel + GAP) + 2, 2), title, fill=(0, 0, 0))
    scale = panel / d.images.shape[-1]
    for r in range(rows):
        img = _up(d.images[r], panel)
        ctx = _up(torch.where(d.context[r], d.images[r], torch.full_like(d.images[r], 0.5)), panel)
        box = d.boxes[r] * scale
        pasted = [paste_boxes(ctx[None], smp[None], box[None])[0] for smp in (*d.from_pred[r], *d.from_true[r])]
        panels = ([(img, None), (ctx, None), (img, BOX_COLOR)] + [(p, PRED_COLOR) for p in pasted[:s]]
                  + [(p, TRUE_COLOR) for p in pasted[s:]])
        y = HEADER + GAP + r * (panel + GAP)
        for c, (im, color) in enumerate(panels):
            x = GAP + c * (panel + GAP)
            canvas.paste(_to_pil(im), (x, y))
            if color:
                x1, y1, x2, y2 = box.round().long().tolist()
                draw.rectangle((x + x1, y + y1, x + x2 - 1, y + y2 - 1), outline=color, width=max(1, panel // 64))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return rows, cols


def visualize(ck: Any, decoder: RCDMDecoder, dataset: Any, out: str | Path, n_images: int = 4,
              n_samples: int = 3, n_targets: int = 1, ddim_steps: int = 50, seed: int = 0,
              panel: int | None = None) -> dict[str, Any]:
    """Write the figure for ``n_images`` seeded picks of ``dataset`` (encoder-sized, normalized)."""
    if n_images < 1 or n_samples < 1 or n_targets < 1:
        raise UserError("--n-images, --n-samples and --n-targets must be positive")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n_images]
    images = torch.stack([dataset[int(i)][0] for i in pick])
    decoded = decode_predictions(ck, decoder, images, n_samples, n_targets, ddim_steps, seed)
    panel = panel or max(96, images.shape[-1])
    rows, cols = draw_figure(decoded, out, panel)
    return {"path": str(out), "rows": rows, "cols": cols, "panel": panel, "images": pick.tolist()}
