"""Closed-form ridge regression for few-shot linear evaluation (big_vision ``fewshot_lsr``).

Features are standardised with the few-shot set's own mean and std (+1e-5), a
constant bias feature of 100 is appended (large, so its weight is almost
unregularised), targets are ``2 * onehot - 1`` and

    W = (XᵀX + λI)⁻¹ XᵀY           (primal, N >= D)
      = Xᵀ (XXᵀ + λI)⁻¹ Y          (dual,   N <  D)

Either way one eigendecomposition ``Q diag(e) Qᵀ`` of the smaller Gram
matrix is computed once, and each λ costs a rescale: ``W = L diag(1/(e+λ)) R``.
All algebra is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BIAS_FEATURE = 100.0
STD_EPS = 1e-5
DEFAULT_L2 = 2.0**10


def augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardise (N, D) features and append the constant bias column: (N, D + 1) float64."""
    x = (x.double() - mean) / std
    return torch.cat([x, x.new_full((x.shape[0], 1), BIAS_FEATURE)], dim=1)


def signed_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels (N,) -> targets (N, K) in {-1, 1}."""
    return 2.0 * torch.nn.functional.one_hot(labels.long(), num_classes).double() - 1.0


@dataclass
class RidgeSolver:
    """The eigendecomposition of the smaller Gram matrix, ready to solve for any λ."""

    eigs: torch.Tensor  # (M,)   M = min(N, D)
    left: torch.Tensor  # (D, M) Q (primal) or XᵀQ (dual)
    right: torch.Tensor  # (M, K) QᵀXᵀY (primal) or QᵀY (dual)

    @classmethod
    def fit(cls, x: torch.Tensor, targets: torch.Tensor) -> RidgeSolver:
        """``x`` (N, D) design matrix, ``targets`` (N, K); both used as given (float64)."""
        x, targets = x.double(), targets.double()
        n, d = x.shape
        if n >= d:
            eigs, q = torch.linalg.eigh(x.T @ x)
            return cls(eigs, q, q.T @ (x.T @ targets))
        eigs, q = torch.linalg.eigh(x @ x.T)
        return cls(eigs, x.T @ q, q.T @ targets)

    def weights(self, l2: float) -> torch.Tensor:
        """Ridge weights (D, K) for regularisation ``l2``."""
        return (self.left / (self.eigs + l2)) @ self.right


@dataclass
class FewShotRidge:
    """A few-shot linear classifier: standardisation statistics and the ridge solver."""

    mean: torch.Tensor
    std: torch.Tensor
    solver: RidgeSolver

    @classmethod
    def fit(cls, x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FewShotRidge:
        x = x.double()
        mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, unbiased=False, keepdim=True) + STD_EPS
        solver = RidgeSolver.fit(augment(x, mean, std), signed_onehot(labels, num_classes))
        return cls(mean, std, solver)

    def predict(self, x: torch.Tensor, l2: float = DEFAULT_L2) -> torch.Tensor:
        """Class predictions (N,) for raw features (N, D)."""
        return (augment(x, self.mean, self.std) @ self.solver.weights(l2)).argmax(dim=1)
