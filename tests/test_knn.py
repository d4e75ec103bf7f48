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
