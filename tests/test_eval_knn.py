"""knn: weighted votes against scikit-learn's KNeighborsClassifier with the same weights."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import TensorDataset
from vitssl_plugins.knn import knn_predict

from vitssl.plugins import get_registry


def test_matches_sklearn_weighted_neighbours():
    rng = np.random.default_rng(0)
    k_classes, temperature = 6, 0.1
    centers = rng.normal(size=(k_classes, 16))
    ytr, yte = rng.integers(0, k_classes, 400), rng.integers(0, k_classes, 150)
    xtr = centers[ytr] + 1.5 * rng.normal(size=(400, 16))
    xte = centers[yte] + 1.5 * rng.normal(size=(150, 16))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    ks = (1, 7, 50)
    ours = knn_predict(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                       k_classes, ks, temperature, chunk=64)
    for k in ks:
        # On unit vectors, cosine similarity = 1 - d^2 / 2 for Euclidean distance d.
        ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute",
                                   weights=lambda d: np.exp((1 - d**2 / 2) / temperature))
        expected = ref.fit(unit(xtr), ytr).predict(unit(xte))
        np.testing.assert_array_equal(ours[k].numpy(), expected)


def _task(n):
    torch.manual_seed(0)
    x = torch.randn(n, 5)
    y = torch.arange(n) % 3
    return type("T", (), {"train": TensorDataset(x, y), "test": TensorDataset(x, y),
                          "num_classes": 3, "name": "t"})()


def test_evaluator_reports_each_k_and_names_a_capped_k_by_the_k_used(capsys):
    task = _task(60)
    metrics = get_registry().get("evaluators", "knn")(k=[1, 100, 200], progress=False).run(
        nn.Identity(), task)
    assert sorted(metrics) == ["knn_k1_top1", "knn_k60_top1"]  # 100 and 200 both use all 60
    assert "k=100, 200 exceeds the 60 training examples" in capsys.readouterr().err
    assert metrics["knn_k1_top1"] == pytest.approx(100.0)  # each test point is its own neighbour
    x, y = task.train.tensors
    expected = knn_predict(x, y, x, 3, (60,), 0.07)[60]
    assert metrics["knn_k60_top1"] == pytest.approx(100.0 * (expected == y).float().mean().item())


def test_k_within_the_train_size_keeps_its_name(capsys):
    metrics = get_registry().get("evaluators", "knn")(k=[5, 60], progress=False).run(
        nn.Identity(), _task(60))
    assert sorted(metrics) == ["knn_k5_top1", "knn_k60_top1"]
    assert "exceeds" not in capsys.readouterr().err
