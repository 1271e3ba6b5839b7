"""linear-probe: on fixed features, close to scikit-learn's LogisticRegression."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import TensorDataset

from vitssl.data.digits import Digits
from vitssl.eval.linear import split_train_val, train_sgd
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
