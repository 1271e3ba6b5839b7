"""Fused attention in Triton (FlashAttention-2 style), forward and backward, for ViT shapes.

softmax(q kᵀ · scale) v for (B, H, N, D) tensors with any strides whose last
stride is 1 (views of one packed qkv projection need no copy), any N >= 1
(ragged last tiles are masked) and any D <= 256 (padded to a power of two with
a mask). fp16 / bf16 / fp32 inputs accumulate in fp32; fp64 inputs (for
gradcheck) accumulate in fp64. Gradients come back in the memory layout of the
inputs. The kernels are in :mod:`vitssl.kernels.attention_kernels`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import triton
import triton.language as tl

from vitssl.kernels.attention_configs import (
    DELTA_BLOCK_M,
    INTERPRETER_CONFIG,
    BlockConfig,
    autotune_configs,
    interpreting,
    pruner,
    tile,
)
from vitssl.kernels.attention_kernels import (
    _attn_bwd_delta,
    _attn_bwd_dkdv,
    _attn_bwd_dq,
    _attn_fwd,
)

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
# Triton picks compiled vs interpreted kernels when they are decorated, i.e. at import.
_INTERPRETED = interpreting()
KERNELS = {"fwd": _attn_fwd, "bwd_delta": _attn_bwd_delta, "bwd_dkdv": _attn_bwd_dkdv,
           "bwd_dq": _attn_bwd_dq}
# The tiled kernels, autotuned; the autotuner adds the tensors' dtypes to the key.
_AUTOTUNED = {
    name: triton.autotune(autotune_configs(name), key=["N_BUCKET", "BLOCK_D"],
                          prune_configs_by={"early_config_prune": pruner(name)})(KERNELS[name])
    for name in ("fwd", "bwd_dkdv", "bwd_dq")}


def _buffer(like: torch.Tensor, shape: tuple[int, ...] | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised buffer for a kernel to fill: ``like``'s layout, or a fresh ``shape``.

    Every kernel output goes through here, so tests can poison them all.
    """
    if shape is None:
        return torch.empty_like(like, dtype=dtype)
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Kernels launch on the current CUDA device: make it ``t``'s."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _statics(q) -> dict:  # noqa: ANN001
    """Constexprs shared by every kernel: tile width, upcast, dot precision, accumulator."""
    upcast = q.dtype == torch.bfloat16 and _INTERPRETED  # the interpreter has no bf16 math
    return {"BLOCK_D": tile(q.shape[-1]), "UPCAST": upcast,
            "PRECISION": "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
            "ACC": tl.float64 if q.dtype == torch.float64 else tl.float32}


def launch_args(kernel: str, tensors: tuple, scale: float = 1.0) -> tuple[tuple, dict]:
    """(positional args, constexprs) of ``KERNELS[kernel]`` on ``tensors``, its tensor
    arguments in order ((B, H, N, D) ones and (B·H, N) statistics); the delta kernel's
    constexprs leave out BLOCK_M, the others' the tiles. The ahead-of-time check
    (``vitssl.tools.compile_check``) calls this with stand-in tensors."""
    _, h, n, d = tensors[0].shape
    args = (*tensors, *[s for t in tensors if t.ndim == 4 for s in t.stride()[:3]], h, n, d)
    statics = _statics(tensors[0])
    if kernel == "bwd_delta":
        return args, {"BLOCK_D": statics["BLOCK_D"], "ACC": statics["ACC"]}
    scales = (scale * LOG2E,) if kernel == "fwd" else (scale * LOG2E, scale)
    return (*args, *scales, tile(n)), statics


def _launch(kernel: str, tensors: tuple, scale: float, config: BlockConfig | None) -> None:
    """Run a tiled kernel: autotuned on CUDA, unless ``config`` fixes the tiles."""
    b, h, n, _ = tensors[0].shape
    args, statics = launch_args(kernel, tensors, scale)
    if config is None and not _INTERPRETED:
        fn, tiles = _AUTOTUNED[kernel], {}
    else:
        fn, tiles = KERNELS[kernel], (config or INTERPRETER_CONFIG).launch_kwargs()
    block = "BLOCK_N" if kernel == "bwd_dkdv" else "BLOCK_M"  # dK/dV: a program per key block
    fn[lambda meta: (b * h, triton.cdiv(n, meta[block]))](*args, **statics, **tiles)


def _forward(q, k, v, scale: float, config: BlockConfig | None):
    b, h, n, d = q.shape
    o = _buffer(q)  # same dimension order as q: (B, N, H, D) for packed qkv
    stats = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = _buffer(q, (b * h, n), stats)
    _launch("fwd", (q, k, v, o, lse), scale, config)
    return o, lse


def _backward(do, q, k, v, o, lse, scale: float, config: BlockConfig | None):
    b, h, n, d = q.shape
    delta = _buffer(lse)
    block_m = INTERPRETER_CONFIG.block_m if _INTERPRETED else DELTA_BLOCK_M
    args, statics = launch_args("bwd_delta", (o, do, delta))
    _attn_bwd_delta[(b * h, triton.cdiv(n, block_m))](*args, BLOCK_M=block_m, **statics)
    dq, dk, dv = _buffer(q), _buffer(k), _buffer(v)
    _launch("bwd_dkdv", (q, k, v, do, lse, delta, dk, dv), scale, config)
    _launch("bwd_dq", (q, k, v, do, lse, delta, dq), scale, config)
    return dq, dk, dv


# -- the torch op -------------------------------------------------------------------------
# A torch.library custom op with a fake (shape-only) implementation and autograd, so that
# torch.compile traces through attention without a graph break. Tiles travel as four ints
# (BLOCK_M, BLOCK_N, num_warps, num_stages); [] means autotuned.


def _config(tiles: list[int]) -> BlockConfig | None:
    return BlockConfig(*tiles) if tiles else None


def _out_like(t: torch.Tensor) -> torch.Tensor:
    """Where a kernel output for ``t`` is laid out: ``t``'s order, last stride 1."""
    return torch.empty_like(_last_dim_unit(t))


@torch.library.custom_op("vitssl::fused_attention_fwd", mutates_args=())
def fused_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        tiles: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, log2-sum-exp per row) of the fused forward."""
    q, k, v = _last_dim_unit(q), _last_dim_unit(k), _last_dim_unit(v)
    with _on_device_of(q):
        return _forward(q, k, v, scale, _config(tiles))


@fused_attention_fwd.register_fake
def _(q, k, v, scale, tiles):  # noqa: ANN001, ANN202
    stats = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _out_like(q), q.new_empty((q.shape[0] * q.shape[1], q.shape[2]), dtype=stats)


@torch.library.custom_op("vitssl::fused_attention_bwd", mutates_args=())
def fused_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        o: torch.Tensor, lse: torch.Tensor, scale: float, tiles: list[int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the fused backward; P is recomputed from q, k and the saved lse."""
    q, k, v = _last_dim_unit(q), _last_dim_unit(k), _last_dim_unit(v)
    with _on_device_of(q):
        return _backward(_last_dim_unit(do), q, k, v, o, lse, scale, _config(tiles))


@fused_attention_bwd.register_fake
def _(do, q, k, v, o, lse, scale, tiles):  # noqa: ANN001, ANN202
    return _out_like(q), _out_like(k), _out_like(v)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, scale, tiles = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale, ctx.tiles = scale, tiles


def _backward_rule(ctx, do, _dlse):  # noqa: ANN001, ANN202
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = fused_attention_bwd(do, q, k, v, o, lse, ctx.scale, ctx.tiles)
    return dq, dk, dv, None, None


fused_attention_fwd.register_autograd(_backward_rule, setup_context=_setup_context)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take these tensors, or None if it can."""
    if v.shape != q.shape:
        return (f"the triton attention backend needs v shaped like q, got q {tuple(q.shape)} "
                f"and v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        return (f"the triton attention backend needs q, k, v of one dtype among float16, "
                f"bfloat16, float32, float64; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        return f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return (f"the triton attention backend supports head dims up to {MAX_HEAD_DIM}, "
                f"got {q.shape[-1]}")
    if q.shape[2] < 1 or q.shape[-1] < 1:
        return f"attention needs N >= 1 and D >= 1, got shape {tuple(q.shape)}"
    if q.device.type != "cuda" and not _INTERPRETED:
        return ("the triton attention backend needs CUDA tensors (or TRITON_INTERPRET=1 set "
                f"before triton is imported, to run on CPU); got {q.device.type} tensors")
    return None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float | None = None, config: BlockConfig | None = None
                     ) -> torch.Tensor:
    """softmax(q kᵀ · scale) v with the fused kernels; differentiable in q, k, v.

    ``config`` fixes the tile sizes (default: autotuned on CUDA, a small fixed
    config under the interpreter). Call ``unsupported_reason`` first.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[0] * q.shape[1] == 0:  # nothing to launch; plain math keeps autograd happy
        return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v
    tiles = [] if config is None else list(dataclasses.astuple(config))
    return fused_attention_fwd(q, k, v, scale, tiles)[0]
