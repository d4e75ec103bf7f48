"""Does a tiny I-JEPA learn anything? Train a pretraining config for a budget and compare k-NN and linear
top-1 of the target encoder, the context encoder, the same architecture at random init and raw pixels.

    PYTHONPATH=. python benchmarks/pretrain_quality.py --config tiny-fashion-mnist --eval-every 100
    PYTHONPATH=. python benchmarks/pretrain_quality.py --run jepa_eval/assets/demo --json demo.json

The probe (issue 13's Done-when): a seeded class-stratified subset of the train split (5,000) and of the
test split (2,000); features = the mean of the last-block patch tokens (lastPOOL); k-NN with k = 20 on
cosine similarity (DINO weighting, ``jepa_eval.probes.knn``); logistic regression on standardized
features with C chosen from 10^-3..10^4 on a 10 % stratified hold-out of train, then refit on all of
train with that C. Training time excludes evaluation time."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_eval.datasets import get_dataset  # noqa: E402
from jepa_eval.probes.knn import knn_eval  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.data import build_dataset  # noqa: E402
from pretrain.train import build_models, main  # noqa: E402


def images(ds) -> tuple[torch.Tensor, np.ndarray]:
    loader = torch.utils.data.DataLoader(ds, batch_size=512)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys).numpy()


@torch.no_grad()
def pooled(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    inner = getattr(model, "module", model)
    was = inner.training
    inner.eval()
    out = torch.cat([inner(b).mean(1) for b in x.split(512)]).float().numpy()
    inner.train(was)
    return out


C_GRID = tuple(float(c) for c in 10.0 ** np.arange(-3, 5))   # 1e-3 ... 1e4: random inits pick 1e4
HOLDOUT = 0.1


def _logreg(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))


def linear_probe(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, yte: np.ndarray,
                 seed: int = 0) -> tuple[float, float]:
    """(top-1 %, chosen C): C from C_GRID by accuracy on a stratified hold-out of train (never the
    test split), then refit on all of train with it."""
    fit, held = next(StratifiedShuffleSplit(1, test_size=HOLDOUT, random_state=seed).split(train, ytr))
    with warnings.catch_warnings():  # lbfgs stopping at max_iter on raw pixels is still a fair probe
        warnings.simplefilter("ignore")
        scores = [float((_logreg(c).fit(train[fit], ytr[fit]).predict(train[held]) == ytr[held]).mean())
                  for c in C_GRID]
        best = C_GRID[int(np.argmax(scores))]  # the smallest C among ties: the most regularized
        clf = _logreg(best).fit(train, ytr)
    return 100.0 * float((clf.predict(test) == yte).mean()), best


def probe(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, yte: np.ndarray, k: int) -> dict[str, float]:
    knn = knn_eval(train, ytr, test, yte, ks=(k,), verbose=False)[k]
    linear, c = linear_probe(train, ytr, test, yte)
    return {"knn": round(knn, 2), "linear": round(linear, 2), "C": c}


def baselines(cfg, args: argparse.Namespace) -> tuple[dict, tuple]:
    d = cfg.data
    tr = get_dataset(d.dataset, d.root, "train", d.img_size, max_samples=args.train_samples, seed=1)
    te = get_dataset(d.dataset, d.root, "test", d.img_size, max_samples=args.test_samples, seed=1)
    xtr, ytr = images(tr)
    xte, yte = images(te)
    results: dict = {"config": args.config, "train_samples": len(ytr), "test_samples": len(yte), "k": args.k}
    if args.no_baselines:  # e.g. when comparing runs of one architecture, whose baselines are known
        return results, (xtr, ytr, xte, yte)
    results["raw_pixels"] = probe(xtr.flatten(1).numpy(), ytr, xte.flatten(1).numpy(), yte, args.k)
    random_target = build_models(cfg)[2]  # the exact initial weights of the run below
    results["random_init"] = probe(pooled(random_target, xtr), ytr, pooled(random_target, xte), yte, args.k)
    print(f"raw pixels {results['raw_pixels']}  random init {results['random_init']}", flush=True)
    return results, (xtr, ytr, xte, yte)


def evaluate_run(args: argparse.Namespace) -> dict:
    """Probe every epoch checkpoint of a finished ``jepa-eval pretrain`` run (no training)."""
    import csv
    import re

    from jepa_eval import load_checkpoint
    from pretrain.config import config_from_dict
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        sys.exit(f"--run {run_dir}: not a folder")
    files = sorted(run_dir.glob("*-ep*.pth.tar"), key=lambda p: int(re.search(r"-ep(\d+)", p.name).group(1)))
    latest = sorted(run_dir.glob("*-latest.pth.tar"))
    if latest and (not files or _step(latest[-1]) > _step(files[-1])):
        files.append(latest[-1])  # a run stopped by --max-steps, or a shipped asset with only the latest file
    if not files:
        sys.exit(f"--run {run_dir}: no *-ep*.pth.tar or *-latest.pth.tar checkpoint")
    ck = load_checkpoint(files[-1])
    cfg = config_from_dict(ck.meta["config"])
    results, (xtr, ytr, xte, yte) = baselines(cfg, args)
    log = []
    if (run_dir / "train-log.csv").is_file():
        with open(run_dir / "train-log.csv", newline="") as f:
            log = [r for r in csv.DictReader(f) if r.get("step_time")]  # monitor-only rows carry no step
    elapsed = {int(r["step"]): t for r, t in zip(log, np.cumsum([float(r["step_time"]) for r in log]))}
    curve = []
    for path in files:
        ck = load_checkpoint(path)
        step = _step(path)
        row = {"step": step, "train_seconds": round(float(elapsed.get(step, float("nan"))), 1), "file": path.name}
        for name, model in (("target", ck.target_encoder), ("context", ck.encoder)):
            row[name] = probe(pooled(model, xtr), ytr, pooled(model, xte), yte, args.k)
        curve.append(row)
        print(json.dumps(row), flush=True)
    seconds = float(sum(float(r["step_time"]) for r in log))
    results.update(config=cfg.name, curve=curve, final=curve[-1], steps=curve[-1]["step"],
                   train_seconds=round(seconds, 1), steps_per_s=round(len(log) / seconds, 2) if seconds else None,
                   out=str(run_dir))
    return results


def _step(path: Path) -> int:
    """The global step a checkpoint was written at (epoch x steps-per-epoch is unknown here)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int((state.get("jepa_eval") or {}).get("step", state.get("epoch", 0)))


def run(args: argparse.Namespace) -> dict:
    overrides = {"epochs": args.epochs} if args.epochs else {}
    results, (xtr, ytr, xte, yte) = baselines(load_config(args.config), args)
    curve: list[dict] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def on_step(step: int, models: dict) -> None:
        if step % args.eval_every and step != stop:
            return
        t0 = time.perf_counter()
        row = {"step": step, "train_seconds": round(t0 - clock["start"] - clock["eval"], 1)}
        for name, key in (("target", "target_encoder"), ("context", "encoder")):
            row[name] = probe(pooled(models[key], xtr), ytr, pooled(models[key], xte), yte, args.k)
        curve.append(row)
        print(json.dumps(row), flush=True)
        clock["eval"] += time.perf_counter() - t0

    out = Path(args.out or tempfile.mkdtemp(prefix="pretrain-quality-"))
    total = load_config(args.config, **({"optimization": overrides} if overrides else {}))
    ipe = len(build_dataset(total.data)) // total.data.batch_size
    stop = args.max_steps or int(total.optimization.ipe_scale * total.optimization.epochs * ipe)
    summary = main(total, out, max_steps=args.max_steps, progress=not args.quiet, on_step=on_step)
    train_seconds = summary["seconds"] - clock["eval"]
    results.update(curve=curve, final=curve[-1] if curve else None, steps=summary["step"],
                   train_seconds=round(train_seconds, 1), steps_per_s=round(summary["step"] / train_seconds, 2),
                   out=str(out))
    return results


def table(r: dict) -> str:
    """The probe table as the asset README shows it (Markdown)."""
    f = r["final"]
    rows = [(f"target encoder (EMA), step {f['step']}", f["target"]),
            (f"context encoder, step {f['step']}", f["context"])]
    rows += [(n, r[k]) for n, k in (("same architecture, random init", "random_init"), ("raw pixels", "raw_pixels"))
             if k in r]
    lines = ["| representation | k-NN top-1 | linear top-1 | linear C |", "|---|---|---|---|"]
    lines += [f"| {name} | {acc['knn']:.1f} | {acc['linear']:.1f} | {acc['C']:g} |" for name, acc in rows]
    return "\n".join(lines)


def report(r: dict) -> None:
    print(f"\n{r['config']}: {r['steps']} steps in {r['train_seconds']} s ({r['steps_per_s']} steps/s); "
          f"probes on {r['train_samples']} train / {r['test_samples']} test images (stratified, seed 1): "
          f"mean-pooled last block; k-NN k = {r['k']} cosine; logistic regression on standardized features, "
          f"C in {', '.join(f'{c:g}' for c in C_GRID)} chosen on a {HOLDOUT:.0%} stratified hold-out of train\n")
    print(table(r))
    print("\ncurve (train seconds: target k-NN / linear):")
    for row in r["curve"]:
        print(f"  step {row['step']:>5} {row['train_seconds']:>7.1f} s: "
              f"{row['target']['knn']:.1f} / {row['target']['linear']:.1f}")


def add_probe_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's sizes and the run options this script shares with mask_ablation.py."""
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and random-init probes")
    p.add_argument("--threads", type=int, default=1, help="torch/faiss CPU threads (0: library default)")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny-fashion-mnist")
    p.add_argument("--run", default=None, help="instead of training, probe the epoch checkpoints of this run folder")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (sets schedules)")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (schedules unchanged)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--out", default=None, help="checkpoint folder (default: a temporary one)")
    add_probe_arguments(p)
    args = p.parse_args()
    if args.threads:  # OpenMP spinning makes 2 threads far slower than 1 on a busy shared CPU
        import faiss
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    r = evaluate_run(args) if args.run else run(args)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    cli()
