"""GPU feature extraction: bf16 ViT-H/14 at 224 on synthetic tensors and through the real JPEG pipeline
(an imagefolder of generated JPEGs, ``jepa_eval.datasets`` + DataLoader workers, and ``FeatureCache``),
with model FLOP utilisation against the device's dense bf16 peak; then the probes on the device: k-NN through
FAISS (faiss-gpu where installed) against the CPU streaming search, and the 48-head linear grid against one
head. Exits cleanly without CUDA.

    python -m benchmarks.gpu_extract [--seconds 20 --batch-size 256 --images 1024 --workers 16]"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10G": 70.0, "L4": 121.0}   # dense, no sparsity


def device_peak(name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS.items():   # ordered: "H100 PCIe" before "H100"
        if key in name:
            return tflops
    return None


def write_jpegs(root: Path, n: int, side: int = 320, classes: int = 4, seed: int = 0) -> None:
    """ImageNet-like JPEGs (smooth colour fields plus noise, ~quality 90) in root/train/<class>/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy + c + k) for k in range(3)], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i:05d}.jpg", quality=90)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_loop(step, seconds: float, min_iters: int = 3) -> tuple[int, float]:
    """Run ``step()`` (returns images done) until ``seconds`` pass; (images, wall seconds)."""
    sync()
    t, done, iters = time.perf_counter(), 0, 0
    while iters < min_iters or time.perf_counter() - t < seconds:
        done += step()
        iters += 1
    sync()
    return done, time.perf_counter() - t


def probe_timings(dev: torch.device, small: bool) -> dict:
    """k-NN (auto = FAISS GPU index with faiss-gpu, vs the CPU streaming search; same top-1 required) and the
    default 48-head linear grid vs one head on ``dev``, 100 classes, one epoch of float16 features."""
    from benchmarks.knn_speed import clustered
    from jepa_eval.probes.knn import choose_knn_backend, knn_eval
    from jepa_eval.probes.linear import LinearConfig, cached_batches, fit_grid
    n_train, n_test, dim = (4000, 500, 64) if small else (200_000, 10_000, 1024)
    tx, ty, vx, vy = clustered(n_train, n_test, dim, noise=12.0)
    out: dict = {"knn": {"n_train": n_train, "n_test": n_test, "dim": dim,
                         "auto_backend": " / ".join(choose_knn_backend(n_train, dim))}}
    for backend in ("auto", "streaming"):
        t = time.perf_counter()
        acc = knn_eval(tx, ty, vx, vy, ks=(20,), backend=backend, verbose=False)[20]
        out["knn"][backend] = {"seconds": time.perf_counter() - t, "top1": acc}
    out["knn"]["auto_speedup_vs_cpu_streaming"] = out["knn"]["streaming"]["seconds"] / out["knn"]["auto"]["seconds"]
    x16, rows = tx.astype(np.float16), np.arange(n_train)
    def grid_time(cfg: LinearConfig) -> float:
        fit_grid(dim, 100, cached_batches(x16[:2048], ty[:2048], rows[:2048], cfg, dev), 2048, cfg, dev)  # warm-up
        sync()
        t = time.perf_counter()
        fit_grid(dim, 100, cached_batches(x16, ty, rows, cfg, dev), n_train, cfg, dev)
        sync()
        return time.perf_counter() - t
    grid, one = grid_time(LinearConfig(epochs=1)), grid_time(LinearConfig(epochs=1, lrs=[0.1], wds=[0.0], norms=["bn"]))
    out["head_grid"] = {"n_train": n_train, "dim": dim, "classes": 100, "heads": len(LinearConfig().heads()),
                        "seconds_grid": grid, "seconds_one_head": one, "cost_ratio": grid / one}
    print(f"k-NN {n_train} x {dim}, {n_test} queries: auto ({out['knn']['auto_backend']}) "
          f"{out['knn']['auto']['seconds']:.2f} s, CPU streaming {out['knn']['streaming']['seconds']:.2f} s "
          f"(top-1 {out['knn']['auto']['top1']:.2f} / {out['knn']['streaming']['top1']:.2f}); head grid "
          f"{grid:.2f} s = {grid / one:.1f}x one head ({one:.3f} s) on {dev}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="time per measurement")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=1024, help="JPEGs to generate")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak table")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--skip-probes", action="store_true", help="extraction only (no k-NN / head grid timings)")
    ap.add_argument("--dry-run", action="store_true", help="exercise the code on CPU with a 2-block model")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available() and not a.dry_run:
        print("gpu_extract: no CUDA device here; run this on a GPU machine "
              "(python -m benchmarks.gpu_extract --seconds 20)", file=sys.stderr)
        return 0
    from torch.utils.flop_counter import FlopCounterMode

    from jepa_eval.datasets import get_dataset
    from jepa_eval.models import build_encoder
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cpu" if a.dry_run else "cuda")
    name = "CPU dry run" if a.dry_run else torch.cuda.get_device_name(0)
    peak = a.peak_tflops or device_peak(name)
    depth = 2 if a.dry_run else 32
    model = build_encoder(1280, depth, 14, 224).to(dev).eval()        # ViT-H/14, I-JEPA layout
    x = torch.randn(a.batch_size, 3, 224, 224, device=dev)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    flops_img = counter.get_total_flops()
    rows, out = [], {"device": name, "peak_bf16_tflops": peak, "gflops_per_image": flops_img / 1e9,
                     "batch_size": a.batch_size}

    def record(label: str, images: int, wall: float) -> None:
        ips = images / wall
        mfu = flops_img * ips / (peak * 1e12) if peak else None
        out[label] = {"images_per_s": ips, "mfu": mfu}
        rows.append((label, ips, "n/a" if mfu is None else f"{100 * mfu:.1f}"))
        print(f"{label:45s} {ips:9.1f} img/s   MFU {rows[-1][2]}%", flush=True)

    def fwd(batch: torch.Tensor) -> int:
        with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16):
            model(batch).mean(1)
        return len(batch)

    fwd(x)
    record("synthetic tensors, bf16 autocast", *timed_loop(lambda: fwd(x), a.seconds))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_jpegs(Path(tmp), a.images)
        print(f"wrote {a.images} JPEGs in {time.perf_counter() - t:.1f}s", flush=True)
        ds = get_dataset("imagefolder", tmp, "train", image_size=224)
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, pin_memory=True,
                                             persistent_workers=a.workers > 0, shuffle=True, drop_last=True)
        def epochs(consume):
            def step() -> int:
                return sum(consume(imgs) for imgs, _ in loader)
            return step
        record(f"JPEG loader alone ({a.workers} workers)", *timed_loop(epochs(len), a.seconds, 1))
        record("JPEG loader + model", *timed_loop(epochs(lambda b: fwd(b.to(dev, non_blocking=True))),
                                                   a.seconds, 1))
        from jepa_eval.checkpoint import Checkpoint
        from jepa_eval.features import FeatureCache
        ckpt = Checkpoint(model, model, None, {"sha256": "benchmark-random-init", "img_size": 224})
        t = time.perf_counter()
        FeatureCache(Path(tmp) / "cache").get_or_extract(ckpt, "target", "lastPOOL", ds, batch_size=a.batch_size,
                                                         device=dev, num_workers=a.workers, progress=False)
        record("FeatureCache.get_or_extract end to end", len(ds), time.perf_counter() - t)
    loader_ips, model_ips = out[rows[1][0]]["images_per_s"], out[rows[0][0]]["images_per_s"]
    verdict = "data pipeline IS the bottleneck" if loader_ips < model_ips else "data pipeline is not the bottleneck"
    print(f"\n{name}: {flops_img / 1e9:.1f} GFLOP/img, peak {peak} TFLOPS bf16 dense; {verdict} "
          f"(loader {loader_ips:.0f} vs model {model_ips:.0f} img/s)")
    out["pipeline_bottleneck"] = loader_ips < model_ips
    out["headline"] = {"gpu_extract_mfu": out[rows[0][0]]["mfu"]}
    if not a.skip_probes:
        out["probes"] = probe_timings(dev, small=a.dry_run)
        out["headline"].update(gpu_knn_speedup_vs_cpu_streaming=out["probes"]["knn"]["auto_speedup_vs_cpu_streaming"],
                               gpu_head_grid_cost_ratio=out["probes"]["head_grid"]["cost_ratio"])
    if not (a.no_save or a.dry_run):
        from benchmarks._common import update_results
        update_results("gpu_extract", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
