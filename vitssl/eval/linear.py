"""Linear classifiers on frozen features: BatchNorm without affine, then one linear layer.

As in MAE, the BatchNorm uses mini-batch statistics while training with SGD and the whole
training set's at evaluation (what its running averages converge to on frozen features). A
sweep of C SGD settings trains as one stacked model: the same batches, a (C, D, K) weight.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitssl.eval.ridge import BIAS_FEATURE, RidgeSolver, augment, signed_onehot

BN_EPS = 1e-6
MOMENTUM = 0.9
OPTIMIZERS = ("sgd", "lbfgs", "ridge")


def _one_thread(fn: Callable) -> Callable:
    """Run ``fn`` with one intra-op thread: its many small steps gain nothing from more,
    and on a busy machine thread synchronisation makes them many times slower."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


def _standardise(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (x - mean) / torch.sqrt(var + BN_EPS)


@dataclass
class LinearClassifiers:
    """C linear classifiers over shared standardisation: weight (C, D, K), bias (C, K)."""

    mean: torch.Tensor  # (D,)
    var: torch.Tensor  # (D,)
    weight: torch.Tensor
    bias: torch.Tensor

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, D) -> scores (C, N, K)."""
        z = _standardise(x.float(), self.mean, self.var)
        return torch.einsum("nd,cdk->cnk", z, self.weight) + self.bias[:, None]


@_one_thread
def train_sgd(x: torch.Tensor, y: torch.Tensor, num_classes: int,
              settings: Sequence[tuple[float, float]], *, epochs: int = 100,
              batch_size: int = 256, seed: int = 0) -> LinearClassifiers:
    """Cross-entropy, SGD (momentum 0.9, cosine schedule) for each (lr, weight decay) setting.

    Weights start at zero; weight decay applies to the weights, not the biases.
    The last partial batch of each epoch is dropped (BatchNorm statistics).
    """
    x, y = x.float(), y.long()
    n, d = x.shape
    c = len(settings)
    lr0 = torch.tensor([s[0] for s in settings]).view(c, 1, 1)
    wd = torch.tensor([s[1] for s in settings]).view(c, 1, 1)
    weight, bias = torch.zeros(c, d, num_classes), torch.zeros(c, 1, num_classes)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    batch_size = min(batch_size, n)
    per_epoch = max(1, n // batch_size)
    total, step = epochs * per_epoch, 0
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = x[idx]
            z = _standardise(xb, xb.mean(0), xb.var(0, unbiased=False))
            logits = torch.einsum("nd,cdk->cnk", z, weight) + bias
            # d(mean cross-entropy)/d(logits) = (softmax - onehot) / B, per setting.
            grad = (logits.softmax(-1) - F.one_hot(y[idx], num_classes)) / len(idx)
            grad_w = torch.einsum("nd,cnk->cdk", z, grad) + wd * weight
            grad_b = grad.sum(1, keepdim=True)
            buf_w.mul_(MOMENTUM).add_(grad_w)
            buf_b.mul_(MOMENTUM).add_(grad_b)
            lr = lr0 * 0.5 * (1.0 + math.cos(math.pi * step / total))
            weight -= lr * buf_w
            bias -= lr * buf_b
            step += 1
    return LinearClassifiers(x.mean(0), x.var(0, unbiased=False), weight, bias[:, 0])


@_one_thread
def train_lbfgs(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays: Sequence[float],
                *, iterations: int = 300) -> LinearClassifiers:
    """Full-batch L-BFGS on cross-entropy + (wd / 2)·‖W‖² for each weight decay."""
    x, y = x.float(), y.long()
    mean, var = x.mean(0), x.var(0, unbiased=False)
    z = _standardise(x, mean, var)
    weights, biases = [], []
    for wd in weight_decays:
        w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
        b = torch.zeros(num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                tolerance_change=1e-12)

        def closure(w=w, b=b, opt=opt, wd=wd) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(z @ w + b, y) + 0.5 * wd * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        weights.append(w.detach())
        biases.append(b.detach())
    return LinearClassifiers(mean, var, torch.stack(weights), torch.stack(biases))


def train_ridge(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                l2s: Sequence[float]) -> LinearClassifiers:
    """Closed-form ridge on standardised features for each λ in ``l2s``, float64: {-1, 1}
    targets and a bias feature of 100, as the few-shot solver."""
    x = x.double()
    mean, var = x.mean(0), x.var(0, unbiased=False)
    design = augment(x, mean, torch.sqrt(var + BN_EPS))
    solver = RidgeSolver.fit(design, signed_onehot(y, num_classes))
    weights = torch.stack([solver.weights(l2) for l2 in l2s]).float()  # (C, D + 1, K)
    return LinearClassifiers(mean.float(), var.float(), weights[:, :-1],
                             BIAS_FEATURE * weights[:, -1])


def split_train_val(num: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(num)`` into (train indices, validation indices)."""
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(num * val_fraction))
    return order[n_val:], order[:n_val]
