"""CPU feature-extraction speed through ``FeatureCache`` (data loading, forward, float16 memmap writes)
and model FLOP utilisation. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``; the
CPU peak is *estimated* in the same run as the best rate of a large fp32 matmul (not a datasheet).

    python -m benchmarks.extract_speed [--quick] [--images 256]"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import say, table, update_results
from jepa_eval.checkpoint import load_checkpoint
from jepa_eval.datasets.base import default_transform
from jepa_eval.datasets.builtin import ArrayDataset
from jepa_eval.features import FeatureCache, pool


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best observed fp32 GEMM rate (GFLOP/s) on this machine right now, with torch's default threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def flops_per_image(encoder: torch.nn.Module, size: int, pooling: str = "lastPOOL") -> float:
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pool(encoder.eval(), x, pooling)
    return float(counter.get_total_flops())


def synthetic_dataset(n: int, size: int, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ds = ArrayDataset(images, rng.integers(0, 10, n), [str(i) for i in range(10)],
                      {"dataset": "synthetic", "n": n, "size": size, "seed": seed})
    ds.set_transform(default_transform(size), f"resize{size}-bicubic-imagenetnorm")
    return ds


def demo_tiny(tmp: Path):
    from jepa_eval.demo import random_init_checkpoint
    return load_checkpoint(random_init_checkpoint(tmp / "tiny" / "tiny.pth.tar"))


MODELS = {  # name: (checkpoint factory, image side, images in quick mode)
    "vit_tiny/16 @224": (lambda tmp: load_checkpoint("timm:vit_tiny_patch16_224"), 224, 16),
    "vit_small/16 @224": (lambda tmp: load_checkpoint("timm:vit_small_patch16_224"), 224, 8),
    "demo tiny/4 @28": (demo_tiny, 28, 512),
}


def run(quick: bool = True, images: int | None = None, batch_size: int = 64, save: bool = True) -> dict:
    peak = matmul_peak_gflops()
    rows, out = [], {"cpu_peak_gflops_estimate": peak, "peak_method": "best of 5 fp32 2048^3 torch matmuls, same run",
                     "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (factory, size, n_quick) in MODELS.items():
            ckpt = factory(Path(tmp))
            n = n_quick if quick else (images or 8 * n_quick)
            flops = flops_per_image(ckpt.target_encoder, size)
            ds = synthetic_dataset(n, size)
            t = time.perf_counter()
            feats = FeatureCache(Path(tmp) / "cache").get_or_extract(ckpt, "target", "lastPOOL", ds,
                                                                      batch_size=batch_size, progress=False)
            wall = time.perf_counter() - t
            assert feats.x.shape[0] == n
            ips = n / wall
            mfu = flops * ips / (peak * 1e9)
            out["models"][name] = {"images": n, "seconds": wall, "images_per_s": ips,
                                   "gflops_per_image": flops / 1e9, "mfu_vs_matmul_peak": mfu}
            rows.append([name, n, wall, ips, flops / 1e9, 100 * mfu])
            say(f"  {name}: {ips:.1f} img/s")
    table(f"CPU feature extraction via FeatureCache (lastPOOL, float16 cache, batch {batch_size}); "
          f"peak estimate {peak:.1f} GFLOP/s from a 2048^3 fp32 matmul in this run",
          ["model", "images", "seconds", "img/s", "GFLOP/img", "MFU %"], rows)
    out["headline"] = {"extract_images_per_s": {k: v["images_per_s"] for k, v in out["models"].items()},
                       "extract_mfu_cpu": {k: v["mfu_vs_matmul_peak"] for k, v in out["models"].items()}}
    if save:
        update_results("extract_speed", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None, help="images per model (default 8x the quick count)")
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args(argv)
    return run(a.quick, a.images, a.batch_size)


if __name__ == "__main__":
    main()
