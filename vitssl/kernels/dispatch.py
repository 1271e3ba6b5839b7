"""Pick an attention backend for (B, H, N, D) tensors."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

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


_triton: ModuleType | ImportError | None = None


def _triton_module() -> ModuleType | ImportError:
    """The Triton kernel module, imported on first use (after TRITON_INTERPRET is set)."""
    global _triton
    if _triton is None:
        try:
            from vitssl.kernels import triton_attention as _triton
        except ImportError as err:  # no triton wheel for this platform
            _triton = err
    return _triton


def triton_available() -> bool:
    """Whether the triton package imports here."""
    return not isinstance(_triton_module(), ImportError)


@functools.cache
def _warn_dropout_fallback() -> None:
    warnings.warn("the triton attention kernel has no dropout; attention with dropout_p > 0 "
                  "runs on torch SDPA instead", stacklevel=3)


def _triton_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    """What "auto" asks: CUDA tensors the kernel supports, no dropout (triton is imported
    only for CUDA tensors)."""
    if not q.is_cuda or dropout_p > 0.0 or q.dtype == torch.float64:
        return False
    module = _triton_module()
    return not isinstance(module, ImportError) and module.unsupported_reason(q, k, v) is None


def _sdpa(q, k, v, scale, dropout_p):  # noqa: ANN001, ANN202
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto",
              scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over the last two dimensions; scale defaults to D^-1/2.

    ``backend``: ``"triton"`` (our fused kernel), ``"sdpa"`` (torch's
    scaled_dot_product_attention), ``"reference"`` (plain math) or ``"auto"``
    (Triton for CUDA tensors it supports, else SDPA). The Triton kernel has no
    dropout: with ``dropout_p > 0`` the ``"triton"`` backend warns once and runs
    SDPA, and ``"auto"`` picks SDPA.
    """
    _check(q, k, v)
    if backend not in BACKENDS:
        raise VitsslError(f"unknown attention backend '{backend}'; accepted: "
                          f"{', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if _triton_takes(q, k, v, dropout_p) else "sdpa"
    if backend == "sdpa":
        return _sdpa(q, k, v, scale, dropout_p)
    if backend == "reference":
        return reference_attention(q, k, v, scale=scale, dropout_p=dropout_p)
    module = _triton_module()
    if isinstance(module, ImportError):
        raise VitsslError(f"the triton attention backend needs the triton package, which "
                          f"does not import here ({module}); use backend 'sdpa' or 'auto'")
    reason = module.unsupported_reason(q, k, v)
    if reason is not None:
        raise VitsslError(reason)
    if dropout_p > 0.0:
        _warn_dropout_fallback()
        return _sdpa(q, k, v, scale, dropout_p)
    return module.triton_attention(q, k, v, scale=scale)
