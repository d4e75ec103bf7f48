"""Linear head grid cost: every (norm, lr, wd) head trained at once by ``fit_grid`` against one head, against
the same grid trained one head at a time, and against the single head a user would write by hand (plain
PyTorch: DataLoader + BatchNorm1d + Linear + SGD) - same epochs, same data.

The grid does G x the matmul work of one head, so on a compute-bound CPU its cost ratio cannot fall below
(grid matmul FLOPs / measured matmul peak) / (one head's time); the table prints that floor beside the
measurement, so a missed target can be told apart from slow code.

    python -m benchmarks.head_grid [--quick] [--train 50000 --dim 768 --classes 100 --epochs 2]"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._common import say, table, update_results
from benchmarks.extract_speed import matmul_peak_gflops
from benchmarks.knn_speed import clustered
from jepa_eval.probes.linear import LinearConfig, cached_batches, fit_grid, grid_scores


def train_time(x: np.ndarray, y: np.ndarray, cfg: LinearConfig, n_classes: int) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, model): CPU time is the steadier number on a loaded machine."""
    rows = np.arange(len(x))
    t, c = time.perf_counter(), time.process_time()
    model = fit_grid(x.shape[1], n_classes, cached_batches(x, y, rows, cfg, "cpu"), len(rows), cfg)
    return time.perf_counter() - t, time.process_time() - c, model


def plain_torch_head(x: np.ndarray, y: np.ndarray, cfg: LinearConfig, n_classes: int) -> tuple[float, float]:
    """The hand-written alternative: one BN + linear head, torch DataLoader over the float16 features."""
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                         generator=torch.Generator().manual_seed(0))
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6),
                               torch.nn.Linear(x.shape[1], n_classes))
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * len(loader))
    t, c = time.perf_counter(), time.process_time()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(head(xb.float()), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t, time.process_time() - c


def case(n_train: int, dim: int, n_classes: int, epochs: int, one_at_a_time: int | None, peak: float,
         repeats: int = 1) -> dict:
    """Grid and single heads each timed ``repeats`` times (best kept): one quick epoch is well under a second."""
    x, y, _, _ = clustered(n_train, 1, dim, n_classes)
    x = x.astype(np.float16)                        # what the feature cache stores
    grid = LinearConfig(epochs=epochs)
    heads = grid.heads()
    train_time(x[:2048], y[:2048], LinearConfig(epochs=1), n_classes)   # warm-up: first-call allocations
    runs = [train_time(x, y, grid, n_classes) for _ in range(repeats)]
    t_grid, c_grid, model = min(runs, key=lambda r: r[0])
    say(f"  grid of {len(heads)} heads: {t_grid:.2f} s (best of {repeats})")
    singles = []
    for h in heads[:one_at_a_time or len(heads)]:
        cfg = LinearConfig(lrs=[h["lr"]], wds=[h["wd"]], norms=[h["norm"]], epochs=epochs)
        singles.append(min((train_time(x, y, cfg, n_classes)[:2] for _ in range(repeats)), key=lambda r: r[0]))
        say(f"  single head {h}: {singles[-1][0]:.2f} s")
    (t_one, c_one), (t_loop, c_loop) = np.median(singles, 0), np.mean(singles, 0) * len(heads)
    t_plain, c_plain = plain_torch_head(x, y, grid, n_classes)
    # forward logits and weight gradients: two matmuls per head, every epoch (no input gradient is needed)
    gemm_gflop = 2 * 2 * n_train * dim * n_classes * len(heads) * epochs / 1e9
    floor = gemm_gflop / peak / float(t_one)
    floor_s = gemm_gflop / peak                      # the grid's matmuls alone, at the measured peak
    over_floor = t_grid / max(floor_s, float(t_one))
    acc, _ = grid_scores(model, x, y)
    rows = [[f"grid, {len(heads)} heads at once", t_grid, 1.0, c_grid, 1.0],
            ["one head (median of singles)", t_one, t_one / t_grid, c_one, c_one / c_grid],
            [f"{len(heads)} heads one at a time" + ("" if len(singles) == len(heads) else
                                                     f" ({len(singles)} run, rest by their mean)"), t_loop, t_loop / t_grid, c_loop, c_loop / c_grid],
            ["one plain-PyTorch head (DataLoader, BN + Linear, SGD)", t_plain, t_plain / t_grid, c_plain, c_plain / c_grid]]
    table(f"Linear head grid, {n_train} x {dim} float16 features, {n_classes} classes, {epochs} epochs, batch "
          f"{grid.batch_size} (best head train top-1 {acc.max():.1f}%)", ["what", "wall s", "/ grid", "CPU s", "/ grid"], rows)
    say(f"  grid matmuls: {gemm_gflop:.1f} GFLOP at {gemm_gflop / t_grid:.1f} GFLOP/s = {gemm_gflop / t_grid / peak:.0%} of "
        f"the {peak:.0f} GFLOP/s matmul peak; cost ratio {t_grid / t_one:.1f}x, compute floor {floor:.1f}x; grid / max(floor, one head) = "
        f"{over_floor:.2f}")
    return {"n_train": n_train, "dim": dim, "classes": n_classes, "epochs": epochs, "heads": len(heads),
            "seconds_grid": t_grid, "seconds_one_head": float(t_one), "seconds_one_at_a_time": float(t_loop),
            "seconds_plain_torch_head": t_plain, "cpu_seconds_grid": c_grid, "cpu_seconds_one_head": float(c_one),
            "cpu_seconds_one_at_a_time": float(c_loop), "cpu_time_cost_ratio": c_grid / float(c_one),
            "singles_measured": len(singles), "grid_matmul_gflop": gemm_gflop,
            "grid_fraction_of_matmul_peak": gemm_gflop / t_grid / peak, "cost_ratio": t_grid / float(t_one),
            "cost_ratio_compute_floor": floor, "seconds_compute_floor": floor_s, "cost_over_floor": over_floor, "ratio_vs_plain_torch_head": t_grid / t_plain,
            "speedup_vs_one_at_a_time": float(t_loop) / t_grid}


def run(n_train: int = 50_000, dim: int = 768, n_classes: int = 100, epochs: int = 2, one_at_a_time: int | None = None,
        save: bool = True, repeats: int = 1) -> dict:
    """``one_at_a_time``: how many heads of the grid to train singly (the rest extrapolated by the mean).
    Two cases: ``n_classes`` (the headline) and 10 classes (Fashion-MNIST / CLEVR-sized heads)."""
    peak = matmul_peak_gflops()
    main_case = case(n_train, dim, n_classes, epochs, one_at_a_time, peak, repeats)
    ten = case(n_train, dim, 10, epochs, one_at_a_time, peak, repeats) if n_classes != 10 else main_case
    out = {**main_case, "matmul_peak_gflops": peak, "ten_classes": ten,
           "headline": {"head_grid_cost_ratio": main_case["cost_ratio"],
                        "head_grid_cost_ratio_compute_floor": main_case["cost_ratio_compute_floor"],
                        "head_grid_cost_ratio_10_classes": ten["cost_ratio"],
                        f"head_grid_cost_over_floor_{n_classes}cls": main_case["cost_over_floor"],
                        "head_grid_cost_over_floor_10cls": ten["cost_over_floor"],
                        "head_grid_speedup_vs_one_at_a_time": main_case["speedup_vs_one_at_a_time"]}}
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
        return run(20_000, 384, a.classes, 1, one_at_a_time=4, repeats=3)
    return run(a.train, a.dim, a.classes, a.epochs)


if __name__ == "__main__":
    main()
