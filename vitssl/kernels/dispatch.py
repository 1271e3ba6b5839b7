"""Pick an attention backend for (B, H, N, D) tensors, once per kind of input, and run it.

``choose`` is the one place a backend is picked; ``AttentionDispatch`` keeps its
choices for one call site (an encoder layer), ``attention`` is the plain function.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch
import torch._subclasses.fake_tensor
import torch.nn.functional as F

from vitssl.errors import VitsslError

BACKENDS = ("auto", "triton", "sdpa", "reference")
AUTO_TRITON_DEVICES = ("cuda",)  # device types on which "auto" considers the Triton kernel
# Largest |Triton - SDPA| the self-check accepts, per dtype (values and gradients are O(1)).
SELF_CHECK_TOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2, torch.float32: 1e-3}
_verdicts: dict[tuple[str, int, torch.dtype], str | None] = {}  # (device, D, dtype) -> why not


def check_backend(name: str) -> str:
    """``name`` if it is a backend, else a :class:`VitsslError` listing the accepted ones."""
    if name not in BACKENDS:
        raise VitsslError(f"unknown attention backend '{name}'; accepted: {', '.join(BACKENDS)}")
    return name


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


def triton_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take q, k, v here (no triton, or the kernel's limits),
    or None if it can: the one support predicate of both "auto" and "triton"."""
    module = _triton_module()
    if isinstance(module, ImportError):
        return (f"the triton attention backend needs the triton package, which does not "
                f"import here ({module}); use backend 'sdpa' or 'auto'")
    return module.unsupported_reason(q, k, v)


def self_check(device: str, head_dim: int, dtype: torch.dtype) -> str | None:
    """Run the Triton kernel once, forward and backward, on a small packed-qkv batch against
    torch SDPA. Returns None if it agrees, else why not (exception or mismatch)."""
    module = _triton_module()
    if isinstance(module, ImportError):
        return f"triton does not import ({module})"
    g = torch.Generator().manual_seed(0)
    b, n, h, d = 2, 37, 2, head_dim  # 37: a ragged tile
    base = torch.randn(b, n, 3 * h * d, generator=g).to(device=device, dtype=dtype)
    dout = torch.randn(b, h, n, d, generator=g).to(device=device, dtype=dtype)
    results = []
    try:
        for fn in (module.triton_attention, F.scaled_dot_product_attention):
            leaf = base.detach().requires_grad_()
            q, k, v = leaf.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            with torch.enable_grad():
                out = fn(q, k, v)
                (grad,) = torch.autograd.grad(out, leaf, dout)
            results.append((out.detach().float(), grad.float()))
    except Exception as exc:  # noqa: BLE001  whatever broke, auto must not take a run down
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
    (out, grad), (ref_out, ref_grad) = results
    err = max((out - ref_out).abs().max().item(), (grad - ref_grad).abs().max().item())
    if not err <= SELF_CHECK_TOL.get(dtype, 1e-3):  # also catches NaN
        return f"differs from torch SDPA by {err:.3g} (tolerance {SELF_CHECK_TOL.get(dtype)})"
    return None


@torch.compiler.assume_constant_result
def _self_check_passes(device: str, head_dim: int, dtype: torch.dtype) -> bool:
    """The cached self-check verdict for (device, D, dtype); warns once when it fails.

    Under torch.compile the verdict is taken while tracing and baked in as a constant.
    """
    key = (device, head_dim, dtype)
    if key not in _verdicts:
        with torch._subclasses.fake_tensor.unset_fake_temporarily():
            _verdicts[key] = self_check(device, head_dim, dtype)
        if _verdicts[key] is not None:
            warnings.warn(f"the triton attention kernel failed its self-check on {device} for "
                          f"head dim {head_dim}, {dtype} ({_verdicts[key]}); attention 'auto' "
                          f"uses torch SDPA for these from now on", stacklevel=4)
    return _verdicts[key] is None


@functools.cache
def _warn_dropout_fallback() -> None:
    warnings.warn("the triton attention kernel has no dropout; attention with dropout_p > 0 "
                  "runs on torch SDPA instead", stacklevel=4)


def reset() -> None:
    """Forget every self-check verdict and once-only warning: the next "auto" call on
    CUDA checks the kernel again. Choices an ``AttentionDispatch`` already made stay."""
    _verdicts.clear()
    _warn_dropout_fallback.cache_clear()


def choose(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
           dropout_p: float = 0.0) -> str:
    """The backend that runs attention on these inputs: "triton", "sdpa" or "reference".

    "auto" takes Triton for tensors on ``AUTO_TRITON_DEVICES`` that the kernel supports,
    without dropout, below float64, once ``self_check`` passed for their (device, D, dtype)
    (a failed check warns once); else SDPA. "triton" raises :class:`VitsslError` for
    inputs the kernel cannot take, and with dropout warns once and picks SDPA.
    """
    if backend in ("sdpa", "reference"):
        return backend
    if backend == "auto":
        if (q.device.type not in AUTO_TRITON_DEVICES or dropout_p > 0.0
                or q.dtype == torch.float64 or triton_unsupported(q, k, v) is not None):
            return "sdpa"
        return "triton" if _self_check_passes(str(q.device), q.shape[-1], q.dtype) else "sdpa"
    reason = triton_unsupported(q, k, v)
    if reason is not None:
        raise VitsslError(reason)
    if dropout_p > 0.0:
        _warn_dropout_fallback()
        return "sdpa"
    return "triton"


def _run(chosen: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         scale: float | None, dropout_p: float) -> torch.Tensor:
    if chosen == "triton":
        return _triton_module().triton_attention(q, k, v, scale=scale)
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    # plain math
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, N, N)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto",
              scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over the last two dimensions; scale defaults to D^-1/2.

    ``backend``: ``"triton"`` (our fused kernel), ``"sdpa"`` (torch's
    scaled_dot_product_attention), ``"reference"`` (plain math) or ``"auto"``; how "auto"
    (self-checked Triton on CUDA, else SDPA) and dropout pick one: ``choose``.
    """
    _check(q, k, v)
    chosen = choose(q, k, v, check_backend(backend), dropout_p)
    return _run(chosen, q, k, v, scale, dropout_p)


class AttentionDispatch:
    """``attention`` for one call site: the backend name is checked once, and the choice is
    kept per kind of input (devices, dtypes, head dims, dropout or not), so that a layer
    decides once, not on every call. Under torch.compile the choice is taken while tracing.
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend = check_backend(backend)
        self._choices: dict[tuple, str] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
        _check(q, k, v)
        if self.backend in ("sdpa", "reference"):
            return _run(self.backend, q, k, v, scale, dropout_p)
        if torch.compiler.is_compiling():
            return _run(choose(q, k, v, self.backend, dropout_p), q, k, v, scale, dropout_p)
        # Everything ``choose`` reads from the inputs (after ``_check``).
        key = (q.device, k.device, v.device, q.dtype, k.dtype, v.dtype, q.shape[-1],
               v.shape[-1], q.shape[2] > 0, dropout_p > 0.0)
        chosen = self._choices.get(key)
        if chosen is None:
            chosen = self._choices[key] = choose(q, k, v, self.backend, dropout_p)
        return _run(chosen, q, k, v, scale, dropout_p)
