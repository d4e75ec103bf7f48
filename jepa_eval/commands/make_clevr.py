"""jepa-eval make-clevr: render a procedural CLEVR-format dataset (no Blender) for the clevr-* datasets."""
from __future__ import annotations

import argparse
import os
import time

from ..config_io import nonnegative_int, positive_int

NAME = "make-clevr"
HELP = "render a CLEVR-format scene dataset (numpy, no Blender) for clevr-count / clevr-dist"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder; becomes a CLEVR_v1.0-style root")
    p.add_argument("--n-train", type=positive_int, default=2000, help="scenes in the train split")
    p.add_argument("--n-val", type=nonnegative_int, default=500,
                   help="scenes in the val split (the clevr-* datasets' test split, like VTAB)")
    p.add_argument("--size", type=positive_int, default=128,
                   help="image width in pixels; height is 2/3 of it (CLEVR's 480 x 320 aspect)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: usable CPU cores)")
    p.add_argument("--supersample", type=positive_int, default=2, help="anti-aliasing: rays per pixel side (1-4)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..clevr.labels import COUNT_CLASSES, DIST_CLASSES, count_label, dist_label, histogram, min_depth
    from ..clevr.write import image_shape, write_split
    from ..errors import UserError
    if args.n_train < 0 or args.n_val < 0 or args.n_train + args.n_val == 0:
        raise UserError("--n-train and --n-val must be >= 0 and not both 0")
    if args.size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {args.size}")
    if not 1 <= args.supersample <= 4:
        raise UserError(f"--supersample must be 1-4, got {args.supersample}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a folder")
    workers = args.workers or len(os.sched_getaffinity(0))
    w, h = image_shape(args.size)
    for split, n in (("train", args.n_train), ("val", args.n_val)):
        if n == 0:
            continue
        t0, c0 = time.time(), _cpu()
        bar = lambda it, total: tqdm(it, total=total, desc=f"make-clevr {split}", unit="scene")  # noqa: E731
        scenes = write_split(args.out, split, n, args.size, args.seed, workers, args.supersample, bar)
        dt, cpu = time.time() - t0, _cpu() - c0
        print(f"{split}: {n} scenes of {w}x{h} px in {dt:.1f} s ({n / max(dt, 1e-9):.1f} scenes/s, "
              f"{1000 * cpu / n:.1f} CPU ms/scene, {workers} worker(s))")
        counts = [count_label(len(s["objects"])) for s in scenes]
        dists = [dist_label(min_depth(s["objects"])) for s in scenes]
        print(f"{split} Count classes (objects):\n{histogram(counts, COUNT_CLASSES)}")
        print(f"{split} Dist classes (nearest object depth):\n{histogram(dists, DIST_CLASSES)}")
        missing = [c for i, c in enumerate(COUNT_CLASSES) if i not in counts] + \
                  [c for i, c in enumerate(DIST_CLASSES) if i not in dists]
        if missing:
            print(f"{split}: classes without scenes: {', '.join(missing)} (render more scenes)")
    print(f"CLEVR_v1.0 layout written to {args.out}; use get_dataset('clevr-count' | 'clevr-dist', "
          f"root='{args.out}')")
    return 0


def _cpu() -> float:
    # this process and its finished worker processes
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
