"""k-NN probe: accuracy on easy data, tiny test sets, class count from train labels, no input mutation."""
import numpy as np
import pytest

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


# --- FAISS or streaming: knn_eval picks the path by the size of the float32 training copy -----------------

def memmap_blobs(tmp_path, n=900, classes=5, dim=24):
    x, y = blobs(n, classes, dim=dim, spread=1.5)           # overlapping: neighbours and k both matter
    np.save(tmp_path / "train.npy", x.astype(np.float16))
    tx, ty = blobs(150, classes, dim=dim, seed=1, spread=1.5)
    return np.load(tmp_path / "train.npy", mmap_mode="r"), y, tx, ty


def test_auto_streams_when_the_float32_copy_exceeds_the_budget(tmp_path, capsys, monkeypatch):
    import jepa_eval.probes.knn_stream as knn_stream
    from jepa_eval.probes import knn as knn_mod
    mm, y, tx, ty = memmap_blobs(tmp_path)
    need = 4 * mm.shape[0] * mm.shape[1]                    # 86,400 bytes of float32
    ran = []
    real_stream, real_index = knn_stream.knn_eval_streaming, knn_mod._gpu_index
    monkeypatch.setattr(knn_stream, "knn_eval_streaming",
                        lambda *a, **kw: ran.append("streaming") or real_stream(*a, **kw))
    monkeypatch.setattr(knn_mod, "_gpu_index", lambda dim: ran.append("faiss") or real_index(dim))
    ks = (1, 10, 50)
    small = knn_eval(mm, y, tx, ty, ks=ks, memory_budget=4 * need - 1, chunk=200)   # copy > budget / 4
    assert ran == ["streaming"] and "k-NN via streaming" in capsys.readouterr().err
    large = knn_eval(mm, y, tx, ty, ks=ks, memory_budget=4 * need, chunk=200)       # copy = budget / 4: fits
    assert ran == ["streaming", "faiss"] and "k-NN via faiss" in capsys.readouterr().err
    assert small == large and len(set(small.values())) > 1 and 20 < small[10] < 100
    # an explicit backend wins over the budget, and verbose=False keeps stderr clean
    assert knn_eval(mm, y, tx, ty, ks=ks, backend="faiss", memory_budget=1, verbose=False) == small
    assert ran[-1] == "faiss" and capsys.readouterr().err == ""
    assert knn_eval(mm, y, tx, ty, ks=ks, backend="streaming", memory_budget=2**60) == small
    assert ran[-1] == "streaming"
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), mm)


@pytest.mark.parametrize("chunk", [64, 65536])
def test_both_backends_give_identical_accuracies(tmp_path, chunk):
    mm, y, tx, ty = memmap_blobs(tmp_path)
    ks = (1, 5, 20, 100, 2000)                               # 2000 > n_train: capped at the training set
    faiss_acc = knn_eval(mm, y, tx, ty, ks=ks, chunk=chunk, backend="faiss", verbose=False)
    stream_acc = knn_eval(mm, y, tx, ty, ks=ks, chunk=chunk, backend="streaming", verbose=False)
    assert faiss_acc == stream_acc


def test_choose_backend_rule(monkeypatch):
    from jepa_eval.probes import knn as knn_mod
    from jepa_eval.probes.knn import choose_knn_backend
    gib = 2**30
    # ImageNet-1k train, 1.28 M x 1280: a 6.1 GiB float32 copy; FAISS peaked at 14 GiB RSS on it
    assert choose_knn_backend(1_281_167, 1280, memory_budget=23 * gib)[0] == "streaming"
    assert choose_knn_backend(1_281_167, 1280, memory_budget=64 * gib)[0] == "faiss"
    assert choose_knn_backend(50_000, 384, memory_budget=1 * gib)[0] == "faiss"       # 73 MiB
    assert choose_knn_backend(50_000, 384, "streaming", memory_budget=2**60)[0] == "streaming"
    monkeypatch.setattr(knn_mod, "available_memory", lambda: None)
    assert choose_knn_backend(10**9, 1024)[0] == "faiss"                               # unknown: as before
    monkeypatch.setattr(knn_mod, "_faiss_gpu", lambda: True)
    assert choose_knn_backend(1_281_167, 1280, memory_budget=1)[0] == "faiss"          # GPU index: GPU memory
    with pytest.raises(UserError, match="backend"):
        choose_knn_backend(10, 4, "annoy")
    with pytest.raises(UserError):
        build_params(TASKS.get("knn"), {"backend": "gpu"}, "test")
    assert build_params(TASKS.get("knn"), {"backend": "streaming"}, "test").backend == "streaming"


def test_available_memory_reads_meminfo_and_cgroup_limits(tmp_path):
    from jepa_eval.probes.knn import _cgroup_headroom, available_memory
    found = available_memory()
    assert found is None or found > 0
    # cgroup v2, as a SLURM job step: the job's own limit is the tightest one on the way to the root
    proc = tmp_path / "cgroup"
    proc.write_text("0::/slurm/job_7/step_0\n")
    job = tmp_path / "fs" / "slurm" / "job_7"
    (job / "step_0").mkdir(parents=True)
    (job / "step_0" / "memory.max").write_text("max\n")
    (job / "step_0" / "memory.current").write_text("100\n")
    (job / "memory.max").write_text(f"{8 * 2**30}\n")
    (job / "memory.current").write_text(f"{2**30}\n")
    (tmp_path / "fs" / "memory.max").write_text("max\n")
    assert _cgroup_headroom(proc, tmp_path / "fs") == 7 * 2**30
    # cgroup v1 without a limit ("no limit" is ~2**63), and a process without cgroups
    proc.write_text("4:memory:/\n0::/\n")
    (tmp_path / "fs" / "memory").mkdir()
    (tmp_path / "fs" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "fs" / "memory" / "memory.usage_in_bytes").write_text("5\n")
    assert _cgroup_headroom(proc, tmp_path / "fs") is None
    (tmp_path / "fs" / "memory" / "memory.limit_in_bytes").write_text("1000\n")
    assert _cgroup_headroom(proc, tmp_path / "fs") == 995
    assert _cgroup_headroom(tmp_path / "absent", tmp_path / "fs") is None


def test_knn_task_passes_backend_and_records_the_path_taken(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from jepa_eval.tasks import knn as knn_task
    mm, y, tx, ty = memmap_blobs(tmp_path)
    feats = {"train": SimpleNamespace(x=mm, y=y), "test": SimpleNamespace(x=tx, y=ty)}
    ctx = SimpleNamespace(poolings=["lastPOOL"], features=lambda split, pooling: feats[split])
    task = TASKS.get("knn")
    results = {}
    for backend in ("faiss", "streaming"):
        results[backend] = task(build_params(task, {"ks": [5, 20], "backend": backend}, "test")).run(ctx)
        assert results[backend].details["backend"] == backend
    assert results["faiss"].metrics == results["streaming"].metrics
    monkeypatch.setattr(knn_task, "available_memory", lambda: 100)       # 100 bytes free: auto must stream
    auto = task(build_params(task, {"ks": [5, 20]}, "test")).run(ctx)
    assert auto.details["backend"] == "streaming" and auto.metrics == results["faiss"].metrics
