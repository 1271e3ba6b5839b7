"""DINO's projection head and its cross-entropy between views (shared by DINO and iBOT).

Caron et al. 2021 (facebookresearch/dino ``DINOHead``, ``DINOLoss``): a 3-layer
MLP to an L2-normalised bottleneck, then a weight-normalised linear layer to
``out_dim`` prototypes; the loss is the teacher's target distribution of one
global view against the student's log-softmax of every other view. The
head's optional BatchNorm (``use_bn``) takes its statistics over the global
batch under DDP, so 2 ranks compute what one process does with their batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from vitssl.ssl.heads import GlobalBatchNorm1d


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        norm = (lambda: GlobalBatchNorm1d(hidden_dim)) if use_bn else nn.Identity
        bias = not use_bn  # a bias right before BatchNorm is removed by it
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=bias), norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim, bias=bias), norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        self.last_layer = prototypes(bottleneck_dim, out_dim, norm_last_layer)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(n, in_dim) -> the L2-normalised bottleneck (n, bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.project(x))


def prototypes(bottleneck_dim: int, out_dim: int, norm_last_layer: bool = True) -> nn.Module:
    """Weight-normalised linear layer to ``out_dim`` prototypes (magnitude 1, fixed if asked)."""
    layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
    magnitude = layer.parametrizations.weight.original0
    with torch.no_grad():
        magnitude.fill_(1.0)
    magnitude.requires_grad_(not norm_last_layer)
    return layer


def cross_view_loss(student: torch.Tensor, targets: torch.Tensor,
                    student_temp: float) -> torch.Tensor:
    """Mean over pairs (global i, view v != i) of ``-sum_k targets[:, i] log_softmax(s_v / T)``.

    ``student`` (B, V, K) logits of all views (globals first); ``targets``
    (B, G, K) the teacher's distributions over the K prototypes for the globals.
    """
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for i in range(targets.shape[1]):
        for v in range(student.shape[1]):
            if v == i:
                continue
            total = total + (-targets[:, i] * log_probs[:, v]).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """student (B, V, K) logits of all views, teacher (B, G, K) of the global views."""
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    return cross_view_loss(student, targets, student_temp)
