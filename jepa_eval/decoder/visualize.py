"""Figures from the arrays of ``sample.py``: one row per image, samples beside the image they came from
and beside the shuffled control, so a reader can judge how much the representation carries.

Image mode: image | own representation (guidance 0) | own (guidance w) | another image's representation
(guidance 0) | that other image. Predictor mode (the I-JEPA paper's Fig. 6 question, docs/protocols.md §4):
image | context (box blanked) | box filled from the predictor's output | from the true target
representation | from another image's representation of the same block."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from .model import RCDMDecoder

GAP, HEADER = 4, 16
BOX_COLOR = (40, 200, 40)


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def draw_panels(columns: list[tuple[str, np.ndarray]], path: str | Path, panel: int,
                boxes: np.ndarray | None = None) -> tuple[int, int]:
    """``columns``: (title, uint8 [R, H, W, C]); ``boxes`` [R, 4] (x1, y1, x2, y2) are outlined in every
    column but the first two. Returns (rows, cols)."""
    rows, cols = len(columns[0][1]), len(columns)
    canvas = Image.new("RGB", (cols * panel + (cols + 1) * GAP, HEADER + rows * panel + (rows + 1) * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (title, _) in enumerate(columns):
        draw.text((GAP + c * (panel + GAP) + 2, 2), title, fill=(0, 0, 0))
    for r in range(rows):
        y = HEADER + GAP + r * (panel + GAP)
        for c, (_, arr) in enumerate(columns):
            x = GAP + c * (panel + GAP)
            img = Image.fromarray(_rgb(arr[r])).resize((panel, panel), Image.NEAREST)
            canvas.paste(img, (x, y))
            if boxes is not None and c >= 2:
                s = panel / arr.shape[2]
                x1, y1, x2, y2 = (boxes[r] * s).round().astype(int).tolist()
                draw.rectangle((x + x1, y + y1, x + x2 - 1, y + y2 - 1), outline=BOX_COLOR, width=max(1, panel // 64))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return rows, cols


def visualize(ck: Any, decoder: RCDMDecoder, dataset: Any, out: str | Path, n_images: int = 6,
              ddim_steps: int = 50, seed: int = 0, guidance: float = 2.0, panel: int | None = None) -> dict[str, Any]:
    """Sample ``n_images`` seeded picks of ``dataset`` and draw the figure for the decoder's mode."""
    from .sample import sample_image_mode, sample_predictor_mode
    if n_images < 2:
        raise UserError("--n-images must be at least 2 (the control uses another image's representation)")
    if decoder.spec.condition == "region":
        a = sample_predictor_mode(ck, decoder, dataset, n_images, seed, ddim_steps, guidance)
        columns = [("image", a["images"]), ("context", a["context"]), ("from pred", a["from_pred"]),
                   ("from true", a["from_true"]), ("shuffled", a["from_other"])]
        boxes = a["boxes"]
    else:
        a = sample_image_mode(ck, decoder, dataset, n_images, seed, ddim_steps, guidance)
        columns = [("image", a["images"]), ("own w=0", a["cond_true"])]
        if "cond_true_cfg" in a:
            columns.append((f"own w={guidance:g}", a["cond_true_cfg"]))
        columns += [("other w=0", a["cond_other"]), ("other img", a["images"][a["perm"]])]
        boxes = None
    panel = panel or max(96, a["images"].shape[1])
    rows, cols = draw_panels(columns, out, panel, boxes)
    return {"path": str(out), "rows": rows, "cols": cols, "panel": panel, "arrays": a}
