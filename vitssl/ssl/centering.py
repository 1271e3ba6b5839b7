"""DINOv2's Sinkhorn–Knopp centring of a teacher's logits (DINO's EMA centre is a
buffer of :class:`~vitssl.ssl.self_distillation.SelfDistillation`).

Sinkhorn–Knopp (Cuturi 2013; SwAV, Caron et al. 2020; DINOv2, Oquab et al. 2023,
``sinkhorn_knopp_teacher`` with 3 iterations) finds the assignment ``Q`` (B, K)
closest to ``softmax(logits / temp)`` whose prototypes share the batch equally
(each column sums to B / K) and whose rows are distributions (each row sums to 1).
Computed in log space, so logits at temperature 0.04 never overflow; under
torch.distributed the prototype marginals and the batch size are reduced over
ranks, so 2 ranks give the assignment of one process with their joint batch.
"""

from __future__ import annotations

import math

import torch

from vitssl.ssl.distributed import all_reduce_


def _global_logsumexp_over_batch(log_q: torch.Tensor) -> torch.Tensor:
    """log of each column's sum over the (global) batch: (B, K) -> (1, K)."""
    peak = log_q.amax(dim=0, keepdim=True).detach()
    all_reduce_(peak, "max")
    sums = all_reduce_((log_q - peak).exp().sum(dim=0, keepdim=True))
    return peak + sums.log()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignment of ``logits`` (B, K) at ``temp``; rows sum to 1.

    Each iteration scales columns to the uniform prototype marginal B_total / K
    (reduced over ranks), then rows to 1, so the returned rows sum to 1
    exactly and the columns approach B / K as ``iterations`` grows.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp needs iterations >= 1, got {iterations}")
    log_q = logits.float() / temp
    batch = all_reduce_(torch.tensor(float(log_q.shape[0]), device=log_q.device))
    log_col_target = batch.log() - math.log(log_q.shape[1])
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp_over_batch(log_q) + log_col_target
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.exp()
