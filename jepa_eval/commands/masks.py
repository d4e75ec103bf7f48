"""jepa-eval masks: draw sample context and target blocks of a pretraining config over its images."""
from __future__ import annotations

import argparse

from ..config_io import positive_int

HELP = "draw sample I-JEPA context/target mask blocks over images of a pretraining config (PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="shipped pretraining config name or YAML path")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=positive_int, default=8, help="number of images")
    p.add_argument("--root", default=None, help="dataset folder (overrides data.root)")
    p.add_argument("--seed", type=int, default=0)


def draw(images, masks_enc, masks_pred, grid: tuple[int, int], patch: int, path: str, title: str) -> None:
    """Context patches tinted blue, each target block outlined in its own colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from jepa_eval.datasets.base import IMAGENET_MEAN, IMAGENET_STD

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors[1:]
    for b, ax in enumerate(axes[0]):
        img = images[b].permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        ax.imshow(img.clip(0, 1), extent=(0, img.shape[1], img.shape[0], 0))
        tint = np.zeros((*grid, 4))
        for i in masks_enc[0][b].tolist():
            tint[i // grid[1], i % grid[1]] = (0.1, 0.3, 1.0, 0.45)
        ax.imshow(tint, extent=(0, grid[1] * patch, grid[0] * patch, 0), interpolation="nearest")
        for t, m in enumerate(masks_pred):
            for i in m[b].tolist():
                r, c = divmod(i, grid[1])
                ax.add_patch(plt.Rectangle((c * patch, r * patch), patch, patch, fill=False,
                                           edgecolor=colors[t % len(colors)], linewidth=1.5))
        ax.set_axis_off()
    fig.suptitle(f"{title}: blue = context ({masks_enc[0].shape[1]} patches), "
                 f"outlines = {len(masks_pred)} targets ({masks_pred[0].shape[1]} each)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch
    from jepa_eval.errors import UserError
    from pretrain.config import load_config
    from pretrain.data import EpochSampler, build_dataset
    from ..masks import MultiBlockMaskCollator
    if args.n < 1:
        raise UserError(f"--n must be positive, got {args.n}")
    cfg = load_config(args.config, **({"data": {"root": args.root}} if args.root else {}))
    ds = build_dataset(cfg.data, seed=args.seed)
    sampler = EpochSampler(len(ds), min(args.n, len(ds)), args.seed)
    keys = [k for _, k in zip(range(args.n), iter(sampler))]
    images = torch.stack([ds[k] for k in keys])
    col = MultiBlockMaskCollator(cfg.data.img_size, cfg.model.patch_size, cfg.mask, seed=args.seed)
    masks_enc, masks_pred = col.sample(len(images))
    draw(images, masks_enc, masks_pred, (col.height, col.width), cfg.model.patch_size, args.out, cfg.name)
    print(f"wrote {args.out}")
    return 0
