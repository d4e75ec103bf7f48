"""jepa-eval decoder: train an RCDM-style diffusion decoder on a checkpoint's representations, and draw
what its predictor predicts for masked boxes (docs/protocols.md §4)."""
from __future__ import annotations

import argparse

from ..config_io import nonnegative_float, positive_int
from ..errors import UserError

NAME = "decoder"
HELP = "train a diffusion decoder on frozen representations; sample it with controls; draw figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    t = sub.add_parser("train", help="train (or resume) a decoder", description=(
        "Train a diffusion decoder on the target encoder's mean-pooled representations, extracted once into "
        "OUT/reps.npz. condition image: draw the whole image from its pooled representation; condition "
        "region: inpaint a target box from the context image and the pooled representation of the block."))
    _common(t)
    t.add_argument("--out", required=True, help="decoder folder (decoder.json, decoder.pt, state.pt, samples/)")
    t.add_argument("--config", default="cpu", help="cpu, gpu or a YAML file (default: cpu)")
    t.add_argument("--size", type=positive_int, default=None, help="decoder resolution in pixels (default: the config's)")
    t.add_argument("--max-steps", type=positive_int, default=None)
    t.add_argument("--batch-size", type=positive_int, default=None, help="images per step")
    t.add_argument("--max-samples", type=positive_int, default=None, help="train on a seeded subset of this many images")
    t.add_argument("--condition", choices=["region", "image"], default=None,
                   help="image: pooled whole image (default); region: pooled target block, inpainting")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    s = sub.add_parser("sample", help="seeded samples and their shuffled control, as arrays (.npz)")
    _common(s)
    s.add_argument("--decoder", required=True, help="a folder written by `jepa-eval decoder train`")
    s.add_argument("--out", required=True, help="output file (.npz); arrays in docs/decoder.md")
    s.add_argument("--mode", choices=["image", "predictor"], default="image",
                   help="image: whole images from pooled representations; predictor: the block comparison")
    s.add_argument("--split", default="test")
    s.add_argument("--n", type=positive_int, default=64, help="images (at least 2)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ddim-steps", type=positive_int, default=50)
    s.add_argument("--guidance", type=nonnegative_float, default=0.0,
                   help="classifier-free guidance w > 0 adds *_cfg arrays; guidance 0 is always written")
    v = sub.add_parser("visualize", help="a figure of samples beside their images and the shuffled control")
    _common(v)
    v.add_argument("--decoder", required=True, help="a folder written by `jepa-eval decoder train`")
    v.add_argument("--out", required=True, help="figure file (.png)")
    v.add_argument("--split", default="test")
    v.add_argument("--n-images", type=positive_int, default=4)
    v.add_argument("--ddim-steps", type=positive_int, default=50)
    v.add_argument("--guidance", type=nonnegative_float, default=2.0,
                   help="the guided column's w (guidance 0 is always shown)")
    v.add_argument("--panel", type=positive_int, default=None, help="panel size in pixels (default: max(96, image size))")
    v.add_argument("--seed", type=int, default=0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file or timm:NAME")
    p.add_argument("--dataset", required=True, help="dataset name (see `jepa-eval list datasets`)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..datasets import get_dataset
    from ._environment import cache_dir, data_root
    ck = load_checkpoint(args.checkpoint, cache=cache_dir())
    root = data_root(args.dataset, args.root)
    size = int(ck.meta["img_size"])
    if args.action == "train":
        from ..decoder import load_config, train_decoder
        cfg = load_config(args.config, size=args.size, condition=args.condition, max_steps=args.max_steps,
                          batch_size=args.batch_size, max_samples=args.max_samples)
        ds = get_dataset(args.dataset, root, split="train", image_size=size,
                         max_samples=cfg.train.max_samples, seed=cfg.train.seed)
        res = train_decoder(ck, ds, args.out, cfg, resume=args.resume, device=args.device)
        print(f"decoder trained for {res['steps']} steps in {res['seconds']:.0f} s "
              f"(loss {res['loss'] if res['loss'] is None else round(res['loss'], 4)}) -> {res['out']}")
        if res["last_grid"]:
            print(f"samples: {res['last_grid']}")
        return 0
    import torch
    from ..decoder import load_decoder
    from ..decoder.sample import check_pair
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    decoder = load_decoder(args.decoder, device)
    mode = args.mode if args.action == "sample" else ("predictor" if decoder.spec.condition == "region" else "image")
    check_pair(ck, decoder, mode)  # fail before loading any data
    n = args.n if args.action == "sample" else args.n_images
    if n < 2 or args.ddim_steps < 1 or args.guidance < 0:
        raise UserError("--n/--n-images must be at least 2, --ddim-steps positive and --guidance >= 0")
    ds = get_dataset(args.dataset, root, split=args.split, image_size=size)
    if args.action == "sample":
        from ..decoder.sample import sample_image_mode, sample_predictor_mode
        fn = sample_predictor_mode if mode == "predictor" else sample_image_mode
        arrays = fn(ck, decoder, ds, n, args.seed, args.ddim_steps, args.guidance)
        _save_npz(args.out, arrays)
        print(f"{mode} mode: {n} images, arrays {', '.join(sorted(arrays))} -> {args.out}")
        return 0
    from ..decoder.visualize import visualize
    res = visualize(ck, decoder, ds, args.out, n, args.ddim_steps, args.seed, args.guidance, args.panel)
    print(f"{res['rows']} rows x {res['cols']} panels of {res['panel']} px -> {res['path']}")
    return 0


def _save_npz(path: str, arrays: dict) -> None:
    from pathlib import Path
    from ..atomic import atomic_np_savez
    out = Path(path)
    if out.suffix != ".npz":
        raise UserError(f"--out must name a .npz file, not {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_np_savez(out, arrays, compressed=True)
