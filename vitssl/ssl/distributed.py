"""The collectives objectives need, as no-ops in one process.

:func:`global_sum` is differentiable (its gradient is summed over ranks too),
so a statistic built from it (a global BatchNorm, a balanced assignment)
makes 2 ranks compute what one process does with their joint batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over ranks (differentiably); ``x`` itself in one process."""
    return _AllReduceSum.apply(x) if is_distributed() else x


def all_reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``x`` reduced over ranks in place (``"sum"`` or ``"max"``), without gradient."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows concatenated in rank order (no gradient), and this rank's offset."""
    if not is_distributed():
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]
