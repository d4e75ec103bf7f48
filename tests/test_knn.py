"""k-NN probe: accuracy on easy data, tiny test sets, class count from train labels, no input mutation."""
import numpy as np
import pytest
import torch

from jepa_eval.errors import UserError
from jepa_eval.probes.knn import knn_eval
from jepa_eval.task import TASKS, build_params


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n, classes, dim=16, seed=0, spread=0.2):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centers[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


def test_separable_small_test_set():
    x, y = blobs(500, 5)
    tx, ty = blobs(7, 5, seed=1)                         # far fewer than 100 test images
    acc = knn_eval(x, y, tx, ty, ks=(1, 10, 20, 200))
    assert set(acc) == {1, 10, 20, 200} and all(v == 100.0 for v in acc.values())


def test_class_count_from_train_labels():
    x, y = blobs(300, 6)
    tx, ty = blobs(40, 6, seed=1)
    keep = ty < 2                                        # the test split only holds classes 0 and 1
    acc = knn_eval(x, y, tx[keep], ty[keep], ks=(10,))
    assert acc[10] == 100.0
    # a vote for class 5 must be representable although no test label is 5
    x2, y2 = x[y == 5], y[y == 5]
    assert knn_eval(x2, y2, tx[keep], ty[keep], ks=(1,))[1] == 0.0


def test_shuffled_labels_near_chance():
    rng = np.random.default_rng(0)
    x, tx = rng.normal(size=(2000, 16)).astype(np.float32), rng.normal(size=(2000, 16)).astype(np.float32)
    acc = knn_eval(x, rng.integers(0, 10, 2000), tx, rng.integers(0, 10, 2000), ks=(20,))
    assert 6.0 < acc[20] < 14.0


def test_does_not_mutate_inputs():
    x, y = blobs(200, 4)
    tx, ty = blobs(30, 4, seed=1)
    x0, tx0 = x.copy(), tx.copy()
    knn_eval(x, y, tx, ty, ks=(5,), chunk=64)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(tx, tx0)


def test_bad_inputs_raise_user_error():
    x, y = blobs(50, 2)
    with pytest.raises(UserError):
        knn_eval(x, y, x, y, ks=(0,))
    with pytest.raises(UserError):
        knn_eval(x, y[:10], x, y)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(UserError):
        knn_eval(bad, y, x, y)
    for params in ({"ks": []}, {"temperature": 0}, {"ks": "10"}):
        with pytest.raises(UserError):
            build_params(TASKS.get("knn"), params, "test")


# --- streaming torch search or FAISS: the same votes either way ------------------------------------------

def memmap_blobs(tmp_path, n=900, classes=5, dim=24):
    x, y = blobs(n, classes, dim=dim, spread=1.5)           # overlapping: neighbours and k both matter
    np.save(tmp_path / "train.npy", x.astype(np.float16))
    tx, ty = blobs(150, classes, dim=dim, seed=1, spread=1.5)
    return np.load(tmp_path / "train.npy", mmap_mode="r"), y, tx, ty


def test_auto_takes_faiss_and_either_backend_gives_the_same_votes(tmp_path, caplog, monkeypatch):
    import logging
    caplog.set_level(logging.INFO, logger="jepa_eval")
    from jepa_eval.probes import knn as knn_mod
    mm, y, tx, ty = memmap_blobs(tmp_path)
    ran = []
    real_stream, real_faiss = knn_mod.streaming_topk, knn_mod.faiss_topk
    monkeypatch.setattr(knn_mod, "streaming_topk", lambda *a, **kw: ran.append("streaming") or real_stream(*a, **kw))
    monkeypatch.setattr(knn_mod, "faiss_topk", lambda *a, **kw: ran.append("faiss") or real_faiss(*a, **kw))
    ks = (1, 10, 50)
    auto = knn_eval(mm, y, tx, ty, ks=ks, chunk=200)
    assert ran == ["faiss"] and "k-NN via faiss (FAISS CPU flat index" in caplog.text
    caplog.clear()
    assert len(set(auto.values())) > 1 and 20 < auto[10] < 100
    # an explicit backend wins, and verbose=False keeps stderr clean
    assert knn_eval(mm, y, tx, ty, ks=ks, backend="streaming", verbose=False) == auto
    assert ran[-1] == "streaming" and caplog.text == ""
    monkeypatch.setattr(knn_mod, "_faiss_gpu", lambda: True)
    assert knn_mod.choose_knn_backend(1_281_167, 1280)[0] == "faiss"          # GPU index: GPU memory
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), mm)


@pytest.mark.parametrize("chunk,query_chunk", [(64, 7), (200, None), (65536, None)])
def test_both_backends_give_identical_accuracies(tmp_path, chunk, query_chunk):
    mm, y, tx, ty = memmap_blobs(tmp_path)
    ks = (1, 5, 20, 100, 2000)                               # 2000 > n_train: capped at the training set
    faiss_acc = knn_eval(mm, y, tx, ty, ks=ks, chunk=chunk, backend="faiss", verbose=False)
    stream_acc = knn_eval(mm, y, tx, ty, ks=ks, chunk=chunk, backend="streaming", verbose=False,
                          query_chunk=query_chunk)
    assert faiss_acc == stream_acc


def test_both_searches_find_the_exact_top_k_across_chunks():
    from jepa_eval.probes.knn import faiss_topk, streaming_topk, unit_rows
    rng = np.random.default_rng(3)
    train, queries = rng.normal(size=(500, 8)).astype(np.float32), unit_rows(rng.normal(size=(40, 8)))
    sims, idx = streaming_topk(train, queries, 9, chunk=37, query_chunk=6)   # the first chunk holds > 9 rows
    exact = (queries @ unit_rows(train).T).topk(9, dim=1)
    torch.testing.assert_close(sims, exact.values)
    assert torch.equal(idx, exact.indices)
    sims, idx = streaming_topk(train, queries, 9, chunk=4)                   # chunks smaller than k
    assert torch.equal(idx, exact.indices)
    for chunk in (37, 4, 1000):                                              # FAISS, one chunk at a time
        sims, idx = faiss_topk(train, queries, 9, chunk=chunk)
        torch.testing.assert_close(sims, exact.values)
        assert torch.equal(idx, exact.indices)


def test_choose_backend_rule():
    from jepa_eval.probes.knn import choose_knn_backend
    assert choose_knn_backend(1_281_167, 1280)[0] == "faiss"          # chunked: memory is one chunk
    assert choose_knn_backend(50_000, 384, "streaming")[0] == "streaming"
    with pytest.raises(UserError, match="backend"):
        choose_knn_backend(10, 4, "annoy")
    with pytest.raises(UserError):
        build_params(TASKS.get("knn"), {"backend": "gpu"}, "test")
    assert build_params(TASKS.get("knn"), {"backend": "streaming"}, "test").backend == "streaming"


def test_knn_task_passes_backend_and_records_the_path_taken(tmp_path):
    from types import SimpleNamespace
    mm, y, tx, ty = memmap_blobs(tmp_path)
    feats = {"train": SimpleNamespace(x=mm, y=y), "test": SimpleNamespace(x=tx, y=ty)}
    ctx = SimpleNamespace(poolings=["lastPOOL"], features=lambda split, pooling: feats[split])
    task = TASKS.get("knn")
    results = {}
    for backend in ("faiss", "streaming"):
        results[backend] = task(build_params(task, {"ks": [5, 20], "backend": backend}, "test")).run(ctx)
        assert results[backend].details["backend"] == backend
    assert results["faiss"].metrics == results["streaming"].metrics
    auto = task(build_params(task, {"ks": [5, 20]}, "test")).run(ctx)
    assert auto.details["backend"] == "faiss" and auto.metrics == results["streaming"].metrics


def test_unit_rows_equals_torch_normalize_and_refuses_inf():
    from jepa_eval.probes.knn import unit_rows
    x = np.random.default_rng(0).normal(size=(300, 17)).astype(np.float16)
    x[5] = 0                                                          # a zero row stays zero (eps), no NaN
    expected = torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32)), dim=1, eps=1e-12)
    assert torch.equal(unit_rows(x), expected)
    x[7, 3] = np.inf
    with pytest.raises(UserError, match="NaN or inf"):
        unit_rows(x)
