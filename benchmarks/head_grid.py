"""Linear head grid cost: every (norm, lr, wd) head trained at once by ``fit_grid`` against one head and
against the same grid trained one head at a time - same epochs, same mini-batches, same data.

    python -m benchmarks.head_grid [--quick] [--train 50000 --dim 768 --classes 100 --epochs 2]"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import say, table, update_results
from benchmarks.knn_speed import clustered
from jepa_eval.probes.linear import LinearConfig, cached_batches, fit_grid, grid_scores


def train_time(x: np.ndarray, y: np.ndarray, cfg: LinearConfig, n_classes: int) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, model): CPU time is the steadier number on a loaded machine."""
    rows = np.arange(len(x))
    t, c = time.perf_counter(), time.process_time()
    model = fit_grid(x.shape[1], n_classes, cached_batches(x, y, rows, cfg, "cpu"), len(rows), cfg)
    return time.perf_counter() - t, time.process_time() - c, model


def run(n_train: int = 50_000, dim: int = 768, n_classes: int = 100, epochs: int = 2, one_at_a_time: int | None = None,
        save: bool = True) -> dict:
    """``one_at_a_time``: how many heads of the grid to train singly (the rest extrapolated by the mean)."""
    x, y, _, _ = clustered(n_train, 1, dim, n_classes)
    x = x.astype(np.float16)                        # what the feature cache stores
    grid = LinearConfig(epochs=epochs)
    heads = grid.heads()
    t_grid, c_grid, model = train_time(x, y, grid, n_classes)
    say(f"  grid of {len(heads)} heads: {t_grid:.2f} s")
    singles = []
    for h in heads[:one_at_a_time or len(heads)]:
        cfg = LinearConfig(lrs=[h["lr"]], wds=[h["wd"]], norms=[h["norm"]], epochs=epochs)
        singles.append(train_time(x, y, cfg, n_classes)[:2])
        say(f"  single head {h}: {singles[-1][0]:.2f} s")
    (t_one, c_one), (t_loop, c_loop) = np.median(singles, 0), np.mean(singles, 0) * len(heads)
    acc, _ = grid_scores(model, x, y)
    rows = [[f"grid, {len(heads)} heads at once", t_grid, 1.0, c_grid, 1.0],
            ["one head (median of singles)", t_one, t_one / t_grid, c_one, c_one / c_grid],
            [f"{len(heads)} heads one at a time" + ("" if len(singles) == len(heads) else
                                                     f" ({len(singles)} run, rest by their mean)"), t_loop, t_loop / t_grid, c_loop, c_loop / c_grid]]
    table(f"Linear head grid, {n_train} x {dim} float16 features, {n_classes} classes, {epochs} epochs, batch "
          f"{grid.batch_size} (best head train top-1 {acc.max():.1f}%)", ["what", "wall s", "/ grid", "CPU s", "/ grid"], rows)
    out = {"n_train": n_train, "dim": dim, "classes": n_classes, "epochs": epochs, "heads": len(heads),
           "seconds_grid": t_grid, "seconds_one_head": float(t_one), "seconds_one_at_a_time": float(t_loop),
           "cpu_seconds_grid": c_grid, "cpu_seconds_one_head": float(c_one), "cpu_seconds_one_at_a_time": float(c_loop),
           "cpu_time_cost_ratio": c_grid / float(c_one), "singles_measured": len(singles),
           "headline": {"head_grid_cost_ratio": t_grid / float(t_one),
                        "head_grid_speedup_vs_one_at_a_time": float(t_loop) / t_grid}}
    if save:
        update_results("head_grid", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 x 384, 1 epoch, 4 single heads")
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args(argv)
    if a.quick:
        return run(20_000, 384, a.classes, 1, one_at_a_time=4)
    return run(a.train, a.dim, a.classes, a.epochs)


if __name__ == "__main__":
    main()
