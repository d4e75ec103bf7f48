"""Cost of the linear probe's training recipes through the real task: `cached` (plain features, no
augmentation), `views` (K augmented views extracted once into the cache, epoch e reads view e mod K) and
`paper` (every epoch re-encodes the training images under RandomResizedCrop + flip, once per pooling).
Process CPU time is reported beside wall time: on a shared machine it is the steadier number.

Each recipe runs on its own empty feature cache; extraction time is the time spent inside the cache's
extraction (plain train + test, plus the views), probe time is the rest of the task. `views` is then run a
second time on its warm cache (what a rerun, another seed of the head grid or a second checkpoint-independent
job costs).

    python -m benchmarks.linear_recipes [--train 2000 --test 500 --views 4 --epochs 20 --threads 1]"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import say, table
from jepa_eval import runner
from jepa_eval.features import FeatureCache

DEMO = str(Path(__file__).resolve().parents[1] / "jepa_eval" / "assets" / "demo" / "jepa-latest.pth.tar")


def run_recipe(tmp: Path, name: str, recipe: str, args: argparse.Namespace, cache: Path) -> dict[str, float]:
    spent = {"extract": 0.0, "extract_cpu": 0.0, "passes": 0}
    extract = FeatureCache._extract

    def timed(self, encoder, entries, dataset, *a, **kw):
        t, c = time.perf_counter(), time.process_time()
        try:
            return extract(self, encoder, entries, dataset, *a, **kw)
        finally:
            spent["extract"] += time.perf_counter() - t
            spent["extract_cpu"] += time.process_time() - c
            spent["passes"] += 1
    FeatureCache._extract = timed
    battery = tmp / f"{name}.yaml"
    battery.write_text(
        "tasks:\n  - {task: linear, id: %s, dataset: fashion-mnist, pooling: [lastPOOL, concatPOOL4],\n"
        "     max_samples: {train: %d, test: %d},\n"
        "     params: {recipe: %s, views: %d, epochs: %d, batch_size: 256,\n"
        "              lrs: [1e-3, 3e-3, 0.01, 0.03, 0.05, 0.1, 0.3], wds: [0.0, 5e-4]}}\n"
        % (name, args.train, args.test, recipe, args.views, args.epochs))
    try:
        t, c = time.perf_counter(), time.process_time()
        (path,) = runner.run_in_process(runner.plan([DEMO], str(battery), tmp / name, cache), progress=False)
        total, total_cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        FeatureCache._extract = extract
    rec = json.loads(path.read_text())
    return {"extract_s": spent["extract"], "extraction_passes": spent["passes"], "extract_cpu_s": spent["extract_cpu"],
            "probe_s": total - spent["extract"], "probe_cpu_s": total_cpu - spent["extract_cpu"],
            "total_s": total, "top1": rec["metrics"]["top1"],
            "holdout_top1": rec["details"]["holdout_top1"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import os
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, recipe, cache in (("cached", "cached", "c1"), ("views", "views", "c2"),
                                    ("views-warm", "views", "c2"), ("paper", "paper", "c3")):
            torch.manual_seed(0)
            r = run_recipe(tmp, name, recipe, args, tmp / cache)
            rows.append([name, r["extraction_passes"], r["extract_cpu_s"], r["probe_cpu_s"], r["extract_s"],
                         r["probe_s"], r["holdout_top1"], r["top1"]])
            say(f"{rows[-1]}  (load {os.getloadavg()[0]:.2f})")
    say(table(f"linear recipes: demo checkpoint, Fashion-MNIST {args.train} train / {args.test} test, "
              f"K={args.views}, {args.epochs} epochs, lastPOOL+concatPOOL4, 28 heads per pooling, "
              f"{args.threads} thread(s); load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
              ["recipe", "extractions", "extract CPU s", "probe CPU s", "extract wall s", "probe wall s",
               "hold-out top1", "test top1"], rows))
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
