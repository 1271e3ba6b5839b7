"""Pick an attention backend for (B, H, N, D) tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitssl.errors import VitsslError
from vitssl.kernels.reference import reference_attention

BACKENDS = ("auto", "triton", "sdpa", "reference")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise VitsslError(f"attention expects (B, H, N, D) tensors, got shapes "
                          f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise VitsslError(f"attention shapes do not agree: q {tuple(q.shape)}, "
                          f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto",
              scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over the last two dimensions; scale defaults to D^-1/2.

    ``backend``: ``"triton"`` (our fused kernel), ``"sdpa"`` (torch's
    scaled_dot_product_attention), ``"reference"`` (plain math) or ``"auto"``.
    """
    _check(q, k, v)
    if backend == "auto":
        backend = "sdpa"
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if backend == "reference":
        return reference_attention(q, k, v, scale=scale, dropout_p=dropout_p)
    if backend == "triton":
        raise VitsslError("the triton attention backend is not available in this build")
    raise VitsslError(f"unknown attention backend '{backend}'; accepted: {', '.join(BACKENDS)}")
