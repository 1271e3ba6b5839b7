"""linear-probe: close to scikit-learn's LogisticRegression (SGD, L-BFGS) and to float64 ridge."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import TensorDataset

from vitssl.data.digits import Digits
from vitssl.eval.linear import split_train_val, train_ridge, train_sgd
from vitssl.plugins import get_registry


class _Task:
    def __init__(self, train, test, num_classes):
        self.train, self.test, self.num_classes, self.name = train, test, num_classes, "fixed"


def _pixels(split):
    data = Digits(split)
    return data.images.reshape(len(data), -1).astype(np.float32) / 255.0, data.labels


@pytest.fixture(scope="module")
def digits_pixels():
    (xtr, ytr), (xte, yte) = _pixels("train"), _pixels("test")
    with threadpool_limits(1):  # small problem on a shared CPU: one BLAS thread is fastest
        reference = 100 * LogisticRegression(max_iter=5000).fit(xtr, ytr).score(xte, yte)
    task = _Task(TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                 TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte)), 10)
    return task, reference


@pytest.mark.parametrize("options", [
    {"optimizer": "sgd", "epochs": 40, "lr": [0.1, 1.0], "weight_decay": [0.0, 1e-3]},
    {"optimizer": "lbfgs", "weight_decay": [1e-3], "lbfgs_iters": 100},
], ids=["sgd", "lbfgs"])
def test_within_two_points_of_sklearn_logistic_regression(digits_pixels, options):
    task, reference = digits_pixels
    probe = get_registry().get("evaluators", "linear-probe")(progress=False, **options)
    metrics = probe.run(nn.Identity(), task)
    assert abs(metrics["linear_probe_top1"] - reference) <= 2.0, (metrics, reference)
    assert reference > 90


def test_stacked_sweep_equals_separate_runs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 12, generator=g), torch.randint(0, 4, (300,), generator=g)
    settings = [(0.05, 0.0), (0.5, 1e-2)]
    stacked = train_sgd(x, y, 4, settings, epochs=5, batch_size=64)
    for i, setting in enumerate(settings):
        alone = train_sgd(x, y, 4, [setting], epochs=5, batch_size=64)
        torch.testing.assert_close(stacked.weight[i], alone.weight[0])
    # The hand-written update is torch's SGD(momentum=0.9) on mean cross-entropy of BN(x).
    lr, wd = settings[1]
    model = nn.Sequential(nn.BatchNorm1d(12, affine=False, eps=1e-6), nn.Linear(12, 4))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    opt = torch.optim.SGD([{"params": [model[1].weight], "weight_decay": wd},
                           {"params": [model[1].bias], "weight_decay": 0.0}], lr=lr, momentum=0.9)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    for step in range(4):  # the first epoch: 300 // 64 = 4 batches
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / 4))
        idx = order[step * 64:(step + 1) * 64]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    one_epoch = train_sgd(x, y, 4, [settings[1]], epochs=1, batch_size=64)
    torch.testing.assert_close(one_epoch.weight[0], model[1].weight.detach().T)
    torch.testing.assert_close(one_epoch.bias[0], model[1].bias.detach())


def test_validation_split_is_disjoint_and_covers_train():
    fit, val = split_train_val(101, 0.2, seed=3)
    assert len(val) == 20 and len(fit) == 81
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(101))


def test_sweep_picks_the_setting_that_wins_on_validation(digits_pixels):
    task, _ = digits_pixels
    probe = get_registry().get("evaluators", "linear-probe")(
        lr=[0.0, 0.5], weight_decay=[0.0], epochs=5, progress=False)
    metrics = probe.run(nn.Identity(), task)  # lr 0 leaves the zero weights: chance level
    assert metrics["linear_probe_lr"] == 0.5 and metrics["linear_probe_val_top1"] > 80
    single = get_registry().get("evaluators", "linear-probe")(
        lr=0.5, weight_decay=0.0, epochs=5, progress=False).run(nn.Identity(), task)
    assert single["linear_probe_top1"] == metrics["linear_probe_top1"]  # same final fit
    assert "linear_probe_val_top1" not in single


def _numpy_ridge_scores(x_fit, y_fit, x_eval, l2, num_classes):
    """Class scores of float64 ridge on standardised features plus a bias column of 100."""
    mean, std = x_fit.mean(0), np.sqrt(x_fit.var(0) + 1e-6)
    design = lambda x: np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])  # noqa: E731
    a, targets = design(x_fit), 2.0 * np.eye(num_classes)[y_fit] - 1.0
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
    return design(x_eval) @ w


def test_ridge_equals_the_float64_normal_equations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 7)) * [1, 2, 3, 4, 5, 6, 70], rng.integers(0, 3, 200)
    probe = rng.normal(size=(50, 7))
    fitted = train_ridge(torch.from_numpy(x), torch.from_numpy(y), 3, [0.1, 300.0])
    for i, l2 in enumerate([0.1, 300.0]):
        expected = _numpy_ridge_scores(x, y, probe, l2, 3)
        got = fitted.logits(torch.from_numpy(probe))[i].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_ridge_sweep_picks_the_lambda_that_wins_on_validation(digits_pixels):
    task, _ = digits_pixels
    x, y = (t.numpy() for t in task.train.tensors)
    xte, yte = (t.numpy() for t in task.test.tensors)
    l2s = [1e-2, 1.0, 1e2, 1e4, 1e6]
    fit, val = (i.numpy() for i in split_train_val(len(y), 0.2, seed=0))
    val_top1 = [100 * np.mean(_numpy_ridge_scores(x[fit], y[fit], x[val], l2, 10).argmax(1)
                              == y[val]) for l2 in l2s]
    best = int(np.argmax(val_top1))
    metrics = get_registry().get("evaluators", "linear-probe")(
        optimizer="ridge", weight_decay=l2s, progress=False).run(nn.Identity(), task)
    assert metrics["linear_probe_wd"] == l2s[best] and l2s[best] < 1e6  # 1e6: near chance
    expected = 100 * np.mean(_numpy_ridge_scores(x, y, xte, l2s[best], 10).argmax(1) == yte)
    assert abs(metrics["linear_probe_top1"] - expected) < 1e-6
