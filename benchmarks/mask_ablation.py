"""Masking ablation (I-JEPA paper, Table 6, at toy scale): the same pretraining budget with (a) the
multi-block masks, (b) random patch masks of the same ratio, (c) one large target block; prints the
target encoder's k-NN and linear top-1 for each.

    PYTHONPATH=. python benchmarks/mask_ablation.py --steps 3000            # the full budget (quiet machine)
    PYTHONPATH=. python benchmarks/mask_ablation.py --steps 200 --json ablation.json   # a quick check

Every variant starts from the same seed (same init, data order and crops) and runs the same schedule over
``--steps`` steps; only ``mask.kind`` (and for single_block ``npred: 1`` and the target scale) changes.
- multiblock: the config's masks (tiny-fashion-mnist: 4 targets of 15-20 %, context block 85-100 % outside them).
- random: per image, the multi-block masks' shapes filled with scattered patches: the context keeps the same
  number of tokens, each target the same number, none of them in the context.
- single_block: one target block of ``--single-scale`` of the image (default 0.6), the context block outside it.
The probe is ``pretrain_quality.py``'s: 5,000 train / 2,000 test images, mean-pooled last block, k-NN k = 20
cosine, logistic regression with C chosen on a 10 % hold-out of train."""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pretrain_quality import add_probe_arguments, baselines, pooled, probe  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.data import build_dataset  # noqa: E402
from pretrain.masks import MASK_KINDS  # noqa: E402
from pretrain.train import main  # noqa: E402


def variant_config(name: str, kind: str, steps: int, single_scale: float):
    """The config with its schedules spanning exactly ``steps`` steps and the given mask kind."""
    base = load_config(name)
    ipe = len(build_dataset(base.data, seed=base.meta.seed)) // base.data.batch_size
    epochs = math.ceil(steps / ipe)
    mask: dict = {"kind": kind}
    if kind == "single_block":
        mask.update(npred=1, pred_mask_scale=[single_scale, single_scale])
    # ipe_scale < 1 shortens the schedules of the last epoch so that they end at exactly `steps`
    return load_config(name, mask=mask, optimization={"epochs": epochs, "ipe_scale": (steps + 0.5) / (epochs * ipe)})


def run(args: argparse.Namespace) -> dict:
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in MASK_KINDS]
    if unknown:
        sys.exit(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(MASK_KINDS)}")
    out = Path(args.out or tempfile.mkdtemp(prefix="mask-ablation-"))
    probe_args = argparse.Namespace(config=args.config, train_samples=args.train_samples,
                                    test_samples=args.test_samples, k=args.k, no_baselines=args.no_baselines)
    results, (xtr, ytr, xte, yte) = baselines(load_config(args.config), probe_args)
    results.update(steps=args.steps, single_scale=args.single_scale, variants={})
    for kind in kinds:
        cfg = variant_config(args.config, kind, args.steps, args.single_scale)
        t0 = time.perf_counter()
        summary = main(cfg, out / kind, max_steps=args.steps, progress=not args.quiet)
        train_s = time.perf_counter() - t0
        target = torch.load(out / kind / "jepa-latest.pth.tar", map_location="cpu", weights_only=True)
        assert target["jepa_eval"]["step"] == args.steps == summary["step"]
        from jepa_eval import load_checkpoint
        ck = load_checkpoint(out / kind / "jepa-latest.pth.tar")
        row = probe(pooled(ck.target_encoder, xtr), ytr, pooled(ck.target_encoder, xte), yte, args.k)
        row.update(loss=round(summary["loss"], 4), train_seconds=round(train_s, 1),
                   total_steps=summary["total_steps"])
        results["variants"][kind] = row
        print(json.dumps({kind: row}), flush=True)
    results["out"] = str(out)
    return results


def report(r: dict) -> None:
    print(f"\n{r['config']}, {r['steps']} steps per variant; target encoder probed on {r['train_samples']} train / "
          f"{r['test_samples']} test images (k-NN k = {r['k']}, linear = logistic regression, C on a hold-out)\n")
    print("| masks | k-NN top-1 | linear top-1 | linear C | final loss | train s |")
    print("|---|---|---|---|---|---|")
    for kind, v in r["variants"].items():
        print(f"| {kind} | {v['knn']:.1f} | {v['linear']:.1f} | {v['C']:g} | {v['loss']:.4f} "
              f"| {v['train_seconds']:.0f} |")
    for name, key in (("random init", "random_init"), ("raw pixels", "raw_pixels")):
        if key in r:
            print(f"| ({name}) | {r[key]['knn']:.1f} | {r[key]['linear']:.1f} | {r[key]['C']:g} | | |")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny-fashion-mnist")
    p.add_argument("--steps", type=int, default=3000, help="training steps per variant (the schedules span them)")
    p.add_argument("--kinds", default=",".join(MASK_KINDS), help="comma-separated mask kinds to train")
    p.add_argument("--single-scale", type=float, default=0.6, help="target block scale of single_block")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    add_probe_arguments(p)
    args = p.parse_args()
    if args.steps < 1 or not 0 < args.single_scale < 1:
        sys.exit("--steps must be positive and --single-scale in (0, 1)")
    if args.threads:
        import faiss
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    r = run(args)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    cli()
