"""k-NN speed: the suite's ``knn_eval`` (its default path, and each backend named) against scikit-learn's
brute-force cosine ``KNeighborsClassifier`` and a chunked torch matmul + top-k, on the same clustered
features, with the same exp(sim / T)-weighted vote so that every accuracy must agree.

    python -m benchmarks.knn_speed [--quick] [--train 50000 --test 10000 --dim 384]"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._common import say, table, update_results
from jepa_eval.probes import knn_eval


def clustered(n_train: int, n_test: int, dim: int, n_classes: int = 100, noise: float = 4.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters around random class centres; ``noise`` sets how much the classes overlap."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, dim), dtype=np.float32) / np.sqrt(dim) * 3
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n)
        x = centers[y] + rng.standard_normal((n, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        return x.astype(np.float32), y
    (tx, ty), (vx, vy) = draw(n_train), draw(n_test)
    return tx, ty, vx, vy


def weighted_vote(sims: np.ndarray, idx: np.ndarray, train_y: np.ndarray, n_classes: int,
                  temperature: float) -> np.ndarray:
    """Predicted class per query from neighbour similarities, votes weighted by exp(sim / T)."""
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.arange(len(sims))[:, None], train_y[idx]), np.exp(sims.astype(np.float64) / temperature))
    return votes.argmax(1)


def sklearn_knn(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    """What a user would otherwise write: brute-force cosine neighbours, the DINO vote on top."""
    from sklearn.neighbors import KNeighborsClassifier
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
    dist, idx = clf.kneighbors(test_x)
    pred = weighted_vote(1.0 - dist, idx, train_y, int(train_y.max()) + 1, temperature)
    return 100.0 * float((pred == test_y).mean())


def torch_knn(train_x, train_y, test_x, test_y, k: int, temperature: float, chunk: int = 1024) -> float:
    """Chunked matmul + top-k on L2-normalized torch tensors."""
    train = torch.nn.functional.normalize(torch.from_numpy(train_x), dim=1)
    test = torch.nn.functional.normalize(torch.from_numpy(test_x), dim=1)
    sims, idx = [], []
    for start in range(0, len(test), chunk):
        s, i = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    pred = weighted_vote(torch.cat(sims).numpy(), torch.cat(idx).numpy(), train_y, int(train_y.max()) + 1,
                         temperature)
    return 100.0 * float((pred == test_y).mean())


def default_knn(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    """``knn_eval`` as a user calls it: ``backend="auto"`` picks the path for this machine."""
    return knn_eval(train_x, train_y, test_x, test_y, ks=(k,), temperature=temperature, verbose=False)[k]


def suite_knn(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    """``knn_eval``'s FAISS path, named explicitly."""
    return knn_eval(train_x, train_y, test_x, test_y, ks=(k,), temperature=temperature, backend="faiss",
                    verbose=False)[k]


def streaming_knn(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    return knn_eval(train_x, train_y, test_x, test_y, ks=(k,), temperature=temperature, backend="streaming",
                    verbose=False)[k]


DEFAULT = "jepa_eval knn_eval (default: auto)"
METHODS = {DEFAULT: default_knn, "jepa_eval knn_eval backend=faiss": suite_knn,
           "jepa_eval knn_eval backend=streaming (torch)": streaming_knn, "torch matmul+topk": torch_knn,
           "sklearn KNeighbors brute cosine": sklearn_knn}


def run(n_train: int = 50_000, n_test: int = 10_000, dim: int = 384, k: int = 20, temperature: float = 0.07,
        repeats: int = 1, save: bool = True) -> dict:
    """Every method ``repeats`` times, best time kept."""
    from jepa_eval.probes.knn import choose_knn_backend
    data = clustered(n_train, n_test, dim, noise=12.0)   # overlapping classes: accuracy well below 100%
    rows, times, accs = [], {name: float("inf") for name in METHODS}, {}
    # the suite's paths interleaved (a load change hits them alike); scikit-learn after them, since its BLAS
    # threads keep spinning for a while after each call and would slow whichever path came next
    suite = [name for name in METHODS if not name.startswith("sklearn")]
    for name in [*suite * repeats, *[n for n in METHODS if n not in suite] * repeats]:
        t = time.perf_counter()
        accs[name] = METHODS[name](*data, k=k, temperature=temperature)
        times[name] = min(times[name], time.perf_counter() - t)
    base, fastest = times[DEFAULT], min(times.values())
    for name in METHODS:
        rows.append([name, times[name], times[name] / base, accs[name]])
        say(f"  {name}: {times[name]:.2f} s")
    auto = choose_knn_backend(n_train, dim)
    table(f"k-NN, {n_train} x {dim} train, {n_test} test, k={k}, T={temperature}, torch threads "
          f"{torch.get_num_threads()} (best of {repeats}); auto = {auto[0]} ({auto[1]})",
          ["method", "seconds", "x the default", "top-1 %"], rows)
    spread = max(accs.values()) - min(accs.values())
    out = {"n_train": n_train, "n_test": n_test, "dim": dim, "k": k, "seconds": times, "top1": accs,
           "top1_max_diff": spread, "auto_backend": auto[0], "repeats": repeats,
           "headline": {"knn_speedup_vs_sklearn": times["sklearn KNeighbors brute cosine"] / base,
                        "knn_auto_over_fastest": base / fastest,
                        "knn_speedup_vs_torch": times["torch matmul+topk"] / base}}
    if spread > 100.0 / n_test + 1e-9:  # at most one query may flip on a float-rounding tie
        raise AssertionError(f"k-NN accuracies disagree: {accs}")
    if save:
        update_results("knn_speed", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50,000 x 384 train, 2,000 test")
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args(argv)
    return run(a.train, 2_000 if a.quick else a.test, a.dim, repeats=max(a.repeats, 3 if a.quick else 1))


if __name__ == "__main__":
    main()
