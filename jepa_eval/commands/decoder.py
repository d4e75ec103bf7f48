"""jepa-eval decoder: train an RCDM-style diffusion decoder on a checkpoint's representations, and draw
what its predictor predicts for masked boxes (docs/protocols.md §4)."""
from __future__ import annotations

import argparse

from ..config_io import positive_int

NAME = "decoder"
HELP = "train a diffusion decoder on frozen representations; visualize predictor outputs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    t = sub.add_parser("train", help="train (or resume) a decoder", description=(
        "Train a decoder that maps the target encoder's average-pooled representation of a target block "
        "to the block's pixels (resampled to --size, independent of the encoder's input size)."))
    _common(t)
    t.add_argument("--out", required=True, help="decoder folder (decoder.json, decoder.pt, state.pt, samples/)")
    t.add_argument("--config", default="cpu", help="cpu, gpu or a YAML file (default: cpu)")
    t.add_argument("--size", type=positive_int, default=None, help="decoder resolution in pixels (default: the config's)")
    t.add_argument("--max-steps", type=positive_int, default=None)
    t.add_argument("--batch-size", type=positive_int, default=None, help="images per step")
    t.add_argument("--max-samples", type=positive_int, default=None, help="train on a seeded subset of this many images")
    t.add_argument("--condition", choices=["region", "image"], default=None,
                   help="region: pooled target block (default); image: pooled whole image")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    v = sub.add_parser("visualize", help="decode predictor outputs for masked boxes into a figure")
    _common(v)
    v.add_argument("--decoder", required=True, help="a folder written by `jepa-eval decoder train`")
    v.add_argument("--out", required=True, help="figure file (.png)")
    v.add_argument("--split", default="test")
    v.add_argument("--n-images", type=positive_int, default=4)
    v.add_argument("--n-samples", type=positive_int, default=3)
    v.add_argument("--n-targets", type=positive_int, default=1, help="target blocks shown per image (one row each)")
    v.add_argument("--ddim-steps", type=positive_int, default=50)
    v.add_argument("--panel", type=positive_int, default=None, help="panel size in pixels (default: max(96, encoder size))")
    v.add_argument("--seed", type=int, default=0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file or timm:NAME")
    p.add_argument("--dataset", required=True, help="dataset name (see `jepa-eval list datasets`)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..datasets import get_dataset
    ck = load_checkpoint(args.checkpoint)
    size = int(ck.meta["img_size"])
    if args.action == "train":
        from ..decoder import load_config, train_decoder
        cfg = load_config(args.config, size=args.size, condition=args.condition, max_steps=args.max_steps,
                          batch_size=args.batch_size, max_samples=args.max_samples)
        ds = get_dataset(args.dataset, args.root, split="train", image_size=size,
                         max_samples=cfg.train.max_samples, seed=cfg.train.seed)
        res = train_decoder(ck, ds, args.out, cfg, resume=args.resume, device=args.device)
        print(f"decoder trained for {res['steps']} steps in {res['seconds']:.0f} s "
              f"(loss {res['loss'] if res['loss'] is None else round(res['loss'], 4)}) -> {res['out']}")
        if res["last_grid"]:
            print(f"samples: {res['last_grid']}")
        return 0
    from ..decoder import load_decoder
    from ..decoder.visualize import check_pair, visualize
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    decoder = load_decoder(args.decoder, device)
    check_pair(ck, decoder)  # fail before loading any data
    for m in (ck.encoder, ck.target_encoder, ck.predictor):
        m.to(device).eval()
    ds = get_dataset(args.dataset, args.root, split=args.split, image_size=size)
    res = visualize(ck, decoder, ds, args.out, args.n_images, args.n_samples, args.n_targets, args.ddim_steps,
                    args.seed, args.panel)
    print(f"{res['rows']} rows x {res['cols']} panels of {res['panel']} px -> {res['path']}")
    return 0
