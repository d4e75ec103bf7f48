"""jepa-eval features: extract (or find cached) features for one checkpoint and dataset split."""
from __future__ import annotations

import argparse

from ..config_io import positive_int

HELP = "extract and cache features of a dataset split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file or timm:NAME")
    p.add_argument("--dataset", required=True, help="dataset name (see `jepa-eval list datasets`)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--split", default="train")
    p.add_argument("--encoder", choices=["target", "context"], default="target")
    p.add_argument("--pooling", default="lastPOOL", help="lastPOOL, concatPOOL4 or tokens")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--cache", default=None, help="feature cache folder")


def run(args: argparse.Namespace) -> int:
    import time

    from ..checkpoint import load_checkpoint
    from ..datasets import get_dataset
    from ..features import FeatureCache, check_pooling
    from ._environment import cache_dir, data_root
    check_pooling(args.pooling)
    ck = load_checkpoint(args.checkpoint, cache=cache_dir(args.cache))
    ds = get_dataset(args.dataset, data_root(args.dataset, args.root), split=args.split, image_size=int(ck.meta["img_size"]),
                     max_samples=args.max_samples)
    t0 = time.time()
    feats = FeatureCache(cache_dir(args.cache)).get_or_extract(
        ck, args.encoder, args.pooling, ds, dtype=args.dtype, batch_size=args.batch_size)
    dt = time.time() - t0
    print(f"{feats.x.shape[0]} x {tuple(feats.x.shape[1:])} {feats.x.dtype} features in {feats.path} "
          f"({dt:.1f} s, {feats.x.shape[0] / max(dt, 1e-9):.0f} img/s incl. cache hits)")
    return 0
