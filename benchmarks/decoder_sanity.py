"""Decoder sanity: does a sample carry its conditioning representation?

On held-out images, a target block is decoded twice from the same initial noise: conditioned on the true
target representation of that block, and on another image's representation of the same block. Each sample
is pasted into the real image's box and re-encoded; in the target encoder's own feature space, the
pooled block representation of the true-conditioned sample should be closer to the real one. Prints
ratio = mean d(true-conditioned) / mean d(other-conditioned) (< 1 means the decoder uses its conditioning)
and writes benchmarks/results/decoder/sanity.json.

    python benchmarks/decoder_sanity.py --checkpoint CK --decoder DIR --dataset fashion-mnist
    # a random-init official-layout checkpoint (no pretrained weights needed): --checkpoint random:PATH
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_eval.checkpoint import load_checkpoint  # noqa: E402
from jepa_eval.datasets import get_dataset  # noqa: E402
from jepa_eval.decoder import ddim_sample, load_decoder  # noqa: E402
from jepa_eval.decoder.features import (block_boxes, crop_boxes, from_unit, paste_boxes, pool_tokens,  # noqa: E402
                                        to_unit)
from jepa_eval.models import JEPAPredictor, build_encoder  # noqa: E402
from pretrain.masks import MaskConfig, MultiBlockMaskCollator  # noqa: E402


def random_official_checkpoint(path: Path, img_size: int = 32, patch: int = 4, width: int = 192, depth: int = 4,
                               pred_width: int = 96, pred_depth: int = 2, seed: int = 0) -> Path:
    """A random-init checkpoint in the official layout ({encoder, predictor, target_encoder} with
    ``module.`` prefixes), for measuring the decoder without pretrained weights."""
    torch.manual_seed(seed)
    enc = build_encoder(width, depth, patch, img_size)
    pred = JEPAPredictor((img_size // patch) ** 2, width, pred_width, pred_depth, num_heads=enc.blocks[0].attn.num_heads)
    sd = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"encoder": sd(enc), "predictor": sd(pred), "target_encoder": sd(enc), "epoch": 0}, path)
    return path


@torch.no_grad()
def sanity(ck, decoder, images: torch.Tensor, ddim_steps: int = 25, seed: int = 0) -> dict:
    spec = decoder.spec
    patch = int(ck.meta["patch_size"])
    masks = MaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.extra["masks"].items()})
    collator = MultiBlockMaskCollator(images.shape[-1], patch, masks, seed=seed + 12345)  # not the training stream
    idx = collator.sample(len(images))[1][0]
    enc = ck.target_encoder
    tokens = enc(images)
    real = pool_tokens(tokens, idx)
    other = pool_tokens(tokens.roll(1, 0), idx)  # the next image's representation of the same block
    boxes = block_boxes(idx, images.shape[-1] // patch, patch)
    unit = to_unit(images)

    def sample(cond: torch.Tensor) -> torch.Tensor:  # same initial noise for both conditionings
        return ddim_sample(decoder, cond, ddim_steps, torch.Generator().manual_seed(seed)).add(1).div(2)

    def reencode(crops: torch.Tensor) -> torch.Tensor:
        return pool_tokens(enc(from_unit(paste_boxes(unit, crops, boxes))), idx)

    f_true, f_other = reencode(sample(real)), reencode(sample(other))
    # floor: the real block after the decoder-resolution round trip
    f_roundtrip = reencode(crop_boxes(unit, boxes, spec.size))
    d_true = (f_true - real).norm(dim=1)
    d_other = (f_other - real).norm(dim=1)
    d_floor = (f_roundtrip - real).norm(dim=1)
    d_swap = (other - real).norm(dim=1)
    return {"ratio": (d_true.mean() / d_other.mean()).item(), "win_rate": (d_true < d_other).float().mean().item(),
            "d_true": d_true.mean().item(), "d_other": d_other.mean().item(),
            "d_real_roundtrip": d_floor.mean().item(), "d_between_images": d_swap.mean().item(),
            "n_images": len(images)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or random:PATH (created if missing)")
    p.add_argument("--decoder", required=True)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--n-images", type=int, default=128)
    p.add_argument("--ddim-steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "decoder" / "sanity.json"))
    a = p.parse_args()
    spec = a.checkpoint
    if spec.startswith("random:"):
        spec = spec[len("random:"):]
        if not Path(spec).exists():
            random_official_checkpoint(Path(spec))
    ck = load_checkpoint(spec)
    decoder = load_decoder(a.decoder)
    ds = get_dataset(a.dataset, a.root, split=a.split, image_size=int(ck.meta["img_size"]))
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed))[:a.n_images]
    images = torch.stack([ds[int(i)][0] for i in pick])
    t0 = time.time()
    res = sanity(ck, decoder, images, a.ddim_steps, a.seed)
    res.update(checkpoint=str(a.checkpoint), decoder=str(a.decoder), dataset=a.dataset, split=a.split,
               ddim_steps=a.ddim_steps, seconds=round(time.time() - t0, 1),
               decoder_steps=_steps(Path(a.decoder)))
    print(f"ratio d(true)/d(other) = {res['ratio']:.3f}  (true closer on {100 * res['win_rate']:.0f}% of "
          f"{res['n_images']} images; d_true {res['d_true']:.3f}, d_other {res['d_other']:.3f}, "
          f"real round trip {res['d_real_roundtrip']:.3f})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {a.out}")


def _steps(folder: Path) -> int | None:
    log = folder / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1])["step"] if lines else None


if __name__ == "__main__":
    main()
