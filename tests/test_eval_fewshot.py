"""few-shot: the closed-form ridge against independent solvers, and the sampling protocol."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from torch import nn
from torch.utils.data import TensorDataset
from vitssl_plugins.few_shot import class_orders, fewshot_indices

from vitssl.eval.ridge import FewShotRidge, RidgeSolver, augment, signed_onehot
from vitssl.plugins import get_registry

LAMBDAS = (2.0**-3, 1.0, 2.0**10, 2.0**16)


def _augmented(n, d, k, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + 3.0)
    y = torch.from_numpy(rng.integers(0, k, size=n))
    mean, std = x.mean(0, keepdim=True), x.std(0, unbiased=False, keepdim=True) + 1e-5
    return augment(x, mean, std), signed_onehot(y, k)


@pytest.mark.parametrize("n,d", [(200, 31), (20, 63)], ids=["primal", "dual"])
def test_ridge_equals_linear_solve(n, d):
    xa, t = _augmented(n, d, 7, seed=n)
    xn, tn = xa.numpy(), t.numpy()
    for lam, w in zip(LAMBDAS, map(RidgeSolver.fit(xa, t).weights, LAMBDAS), strict=True):
        primal = np.linalg.solve(xn.T @ xn + lam * np.eye(d + 1), xn.T @ tn)
        np.testing.assert_allclose(w.numpy(), primal, rtol=1e-6, atol=1e-6 * np.abs(primal).max())
        dual = xn.T @ np.linalg.solve(xn @ xn.T + lam * np.eye(n), tn)
        np.testing.assert_allclose(w.numpy(), dual, rtol=1e-6, atol=1e-6 * np.abs(dual).max())


@pytest.mark.parametrize("n,d", [(150, 24), (30, 80)], ids=["primal", "dual"])
def test_ridge_matches_sklearn(n, d):
    xa, t = _augmented(n, d, 5, seed=d)
    for lam, w in zip(LAMBDAS, map(RidgeSolver.fit(xa, t).weights, LAMBDAS), strict=True):
        ref = Ridge(alpha=lam, fit_intercept=False, solver="svd").fit(xa.numpy(), t.numpy())
        np.testing.assert_allclose(w.numpy(), ref.coef_.T, rtol=1e-6,
                                   atol=1e-6 * np.abs(ref.coef_).max())


def test_standardisation_and_bias_feature():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(40, 6)) * 4 + 2)
    y = torch.from_numpy(rng.integers(0, 3, size=40))
    model = FewShotRidge.fit(x, y, 3)
    xn = x.numpy()
    ref_mean, ref_std = xn.mean(0), xn.std(0) + 1e-5
    np.testing.assert_allclose(model.mean.numpy()[0], ref_mean)
    np.testing.assert_allclose(model.std.numpy()[0], ref_std)
    design = np.hstack([(xn - ref_mean) / ref_std, np.full((40, 1), 100.0)])
    targets = 2 * np.eye(3)[y.numpy()] - 1
    ref = Ridge(alpha=1024.0, fit_intercept=False).fit(design, targets)
    np.testing.assert_array_equal(model.predict(x).numpy(), ref.predict(design).argmax(1))


def test_draws_are_nested_and_balanced():
    labels = np.random.default_rng(1).integers(0, 4, size=300)
    for seed in range(3):
        orders = class_orders(labels, 4, seed)
        previous = set()
        for s in (1, 5, 10, 25):
            idx = fewshot_indices(orders, s)
            assert np.bincount(labels[idx], minlength=4).tolist() == [s] * 4
            assert previous <= set(idx.tolist())
            previous = set(idx.tolist())
    assert not np.array_equal(fewshot_indices(class_orders(labels, 4, 0), 5),
                              fewshot_indices(class_orders(labels, 4, 1), 5))


class _Task:
    def __init__(self, train, test, num_classes):
        self.train, self.test, self.num_classes, self.name = train, test, num_classes, "synthetic"


def test_evaluator_matches_sklearn_protocol():
    """The plugin's numbers equal sklearn Ridge run on the same nested draws."""
    rng = np.random.default_rng(3)
    k, d = 5, 12
    centers = rng.normal(size=(k, d)) * 1.5

    def sample(n):
        y = rng.integers(0, k, size=n)
        return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y

    (xtr, ytr), (xte, yte) = sample(400), sample(300)
    task = _Task(TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                 TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte)), k)
    evaluator = get_registry().get("evaluators", "few-shot")(shots=[1, 5, 10], seeds=3,
                                                             l2_sweep=[1.0], progress=False)
    metrics = evaluator.run(nn.Identity(), task)

    for s in (1, 5, 10):
        for lam, key in ((1024.0, f"fewshot_{s}shot_top1"), (1.0, f"fewshot_{s}shot_top1_l2_1")):
            accs = []
            for seed in range(3):
                idx = fewshot_indices(class_orders(ytr, k, seed), s)
                x64 = xtr[idx].astype(np.float64)
                mean, std = x64.mean(0), x64.std(0) + 1e-5
                design = np.hstack([(x64 - mean) / std, np.ones((len(x64), 1)) * 100.0])
                xt = xte.astype(np.float64)
                test = np.hstack([(xt - mean) / std, np.ones((len(xt), 1)) * 100.0])
                ref = Ridge(alpha=lam, fit_intercept=False)
                ref.fit(design, 2 * np.eye(k)[ytr[idx]] - 1)
                accs.append(100 * np.mean(ref.predict(test).argmax(1) == yte))
            assert metrics[key] == pytest.approx(np.mean(accs), abs=1e-9)
    assert metrics["fewshot_10shot_top1"] > 60  # well-separated clusters: far above chance (20)


def test_short_and_empty_classes_use_what_they_have(capsys):
    """big_vision: a short class gives what it has, an empty one none; counts are reported."""
    rng = np.random.default_rng(7)
    k, d = 4, 6
    centers = rng.normal(size=(k, d)) * 2
    ytr = np.array([0] * 12 + [1] * 9 + [3] * 2)  # class 2: none; class 3: two examples
    yte = np.repeat(np.arange(k), 10)
    xtr = (centers[ytr] + rng.normal(size=(len(ytr), d))).astype(np.float32)
    xte = (centers[yte] + rng.normal(size=(len(yte), d))).astype(np.float32)
    task = _Task(TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                 TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte)), k)
    metrics = get_registry().get("evaluators", "few-shot")(shots=[1, 5, 10], seeds=2,
                                                           progress=False).run(nn.Identity(), task)
    assert sorted(metrics) == sorted(["fewshot_1shot_top1", "fewshot_5shot_top1",
                                      "fewshot_10shot_top1", "fewshot_1shot_short_classes",
                                      "fewshot_5shot_short_classes",
                                      "fewshot_10shot_short_classes"])
    assert [metrics[f"fewshot_{s}shot_short_classes"] for s in (1, 5, 10)] == [1, 2, 3]
    err = capsys.readouterr().err
    assert "1-shot 1, 5-shot 2, 10-shot 3" in err and "1 class(es) have none" in err
    for s in (1, 5, 10):
        accs = []
        for seed in range(2):
            perm = np.random.default_rng(seed).permutation(len(ytr))
            idx = np.array([i for c in range(k) for i in [j for j in perm if ytr[j] == c][:s]])
            assert len(idx) == sum(min(s, n) for n in (12, 9, 0, 2))
            x64 = xtr[idx].astype(np.float64)
            mean, std = x64.mean(0), x64.std(0) + 1e-5
            design = np.hstack([(x64 - mean) / std, np.full((len(idx), 1), 100.0)])
            test = np.hstack([(xte - mean) / std, np.full((len(xte), 1), 100.0)])
            ref = Ridge(alpha=1024.0, fit_intercept=False).fit(design, 2 * np.eye(k)[ytr[idx]] - 1)
            accs.append(100 * np.mean(ref.predict(test).argmax(1) == yte))
        assert metrics[f"fewshot_{s}shot_top1"] == pytest.approx(np.mean(accs), abs=1e-9)


def test_full_classes_report_no_short_counts(capsys):
    x = torch.randn(30, 4)
    y = torch.tensor([0] * 20 + [1] * 10)
    task = _Task(TensorDataset(x, y), TensorDataset(x, y), 2)
    metrics = get_registry().get("evaluators", "few-shot")(shots=[1, 10],
                                                           progress=False).run(nn.Identity(), task)
    assert sorted(metrics) == ["fewshot_10shot_top1", "fewshot_1shot_top1"]
    assert "fewer examples" not in capsys.readouterr().err
