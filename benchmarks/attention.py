"""Our Triton fused attention vs torch SDPA (flash / efficient / cuDNN) at ViT shapes.

For each ViT variant (Ti/S/B/L at patch 16, H at patch 14) at 224 and 384 px,
q, k, v are views of one packed qkv projection, as in the encoder, with a
batch of about ``--tokens`` tokens. Forward and forward+backward are timed
with CUDA events (median of ``--iters`` runs after ``--warmup``); TFLOP/s
counts 4·B·H·N²·D for the forward and 2.5 times that for the backward.
``speedup`` is the best SDPA backend's time divided by Triton's (> 1: Triton
is faster). Before timing, each shape's Triton output and gradients are
checked against SDPA.

Without CUDA it runs a small correctness pass in the Triton interpreter and
says that timings need a GPU.

    python benchmarks/attention.py [--dtype bf16] [--tokens 65536] [--iters 50]
    python benchmarks/attention.py --shapes B@224 L@224 H@224 B@384   # named shapes only
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch.nn.functional as F  # noqa: E402

from vitssl.kernels import attention  # noqa: E402

# name: (heads, head dim, patch)
VARIANTS = {"Ti": (3, 64, 16), "S": (6, 64, 16), "B": (12, 64, 16), "L": (16, 64, 16),
            "H": (16, 80, 14)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def packed_qkv(b: int, h: int, n: int, d: int, dtype: torch.dtype, device: str,
               requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """q, k, v as (B, H, N, D) views of one (B, N, 3·H·D) projection, and that projection."""
    qkv = torch.randn(b, n, 3 * h * d, device=device, dtype=dtype, requires_grad=requires_grad)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, qkv


def sdpa_backends() -> dict[str, object]:
    """The SDPA backends this torch build knows, as context-manager factories."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "cudnn": "CUDNN_ATTENTION"}
    found = {name: getattr(SDPBackend, m) for name, m in names.items() if hasattr(SDPBackend, m)}
    return {name: functools.partial(sdpa_kernel, [member]) for name, member in found.items()}


def time_ms(fn, iters: int, warmup: int) -> float:  # noqa: ANN001
    """Median milliseconds of ``fn()`` over ``iters`` runs, with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def max_errors(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


def run_fwd_bwd(fn, b, h, n, d, dtype, device, dout):  # noqa: ANN001, ANN201
    q, k, v, qkv = packed_qkv(b, h, n, d, dtype, device, requires_grad=True)
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), qkv.grad


def check_shape(b, h, n, d, dtype, device) -> float:  # noqa: ANN001
    """Largest |Triton - SDPA| over the output and the packed-qkv gradient."""
    torch.manual_seed(0)
    dout = torch.randn(b, h, n, d, device=device, dtype=dtype)
    torch.manual_seed(1)
    got = run_fwd_bwd(lambda q, k, v: attention(q, k, v, backend="triton"),
                      b, h, n, d, dtype, device, dout)
    torch.manual_seed(1)
    ref = run_fwd_bwd(F.scaled_dot_product_attention, b, h, n, d, dtype, device, dout)
    return max_errors(got, ref)


def cpu_pass() -> None:
    print("no CUDA device: correctness pass in the Triton interpreter; "
          "timings need a CUDA GPU and were not measured")
    for name, size in (("Ti", 128), ("H", 98)):
        heads, d, patch = VARIANTS[name]
        n = (size // patch) ** 2 + 1
        for dtype in (torch.float32, torch.float16):
            err = check_shape(1, 2, n, d, dtype, "cpu")
            print(f"{name}@{size}px  N={n:4d} D={d:3d} {str(dtype):14s} "
                  f"max |triton - sdpa| (out, dqkv) = {err:.2e}")


def time_kernels(b: int, h: int, n: int, d: int, dtype: torch.dtype, iters: int,
                 warmup: int) -> dict[str, tuple[float, float]]:
    """{kernel: (forward ms, forward+backward ms)} on one packed-qkv batch."""
    q, k, v, qkv = packed_qkv(b, h, n, d, dtype, "cuda", requires_grad=True)
    dout = torch.randn(b, h, n, d, device="cuda", dtype=dtype)
    kernels = {"triton": (lambda: attention(q, k, v, backend="triton"), None)}
    for name, ctx in sdpa_backends().items():
        kernels[f"sdpa-{name}"] = (lambda: F.scaled_dot_product_attention(q, k, v), ctx)
    rows = {}
    for label, (fn, ctx) in kernels.items():
        def fwd(fn=fn):  # noqa: ANN001, ANN202
            with torch.no_grad():
                return fn()

        def fwd_bwd(fn=fn):  # noqa: ANN001, ANN202
            qkv.grad = None
            fn().backward(dout)

        try:
            with ctx() if ctx is not None else contextlib.nullcontext():
                rows[label] = (time_ms(fwd, iters, warmup), time_ms(fwd_bwd, iters, warmup))
        except RuntimeError as exc:  # this backend does not take this shape/dtype/card
            print(f"  {label}: not run ({str(exc).splitlines()[0][:70]})")
    return rows


def gpu_table(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"dtype {args.dtype}  ~{args.tokens} tokens per batch  median of {args.iters}")
    header = (f"{'shape':10s} {'B':>4s} {'H':>3s} {'N':>5s} {'D':>3s} {'kernel':15s} "
              f"{'fwd ms':>8s} {'TFLOP/s':>8s} {'f+b ms':>8s} {'TFLOP/s':>8s}")
    print(header)
    print("-" * len(header))
    shapes = args.shapes or [f"{name}@{size}" for size in args.sizes for name in args.variants]
    for item in shapes:
        name, _, size_text = item.partition("@")
        size = int(size_text)
        heads, d, patch = VARIANTS[name]
        n = (size // patch) ** 2 + 1
        b = max(1, args.tokens // n)
        err = check_shape(b, heads, n, d, dtype, "cuda")  # also autotunes at this batch
        fwd_flops = 4 * b * heads * n * n * d
        rows = time_kernels(b, heads, n, d, dtype, args.iters, args.warmup)
        shape = f"{name}@{size}"
        for label, (t_fwd, t_both) in rows.items():
            print(f"{shape:10s} {b:4d} {heads:3d} {n:5d} {d:3d} {label:15s} "
                  f"{t_fwd:8.3f} {fwd_flops / t_fwd / 1e9:8.1f} "
                  f"{t_both:8.3f} {3.5 * fwd_flops / t_both / 1e9:8.1f}")
        sdpa = [t for label, t in rows.items() if label != "triton"]
        if "triton" in rows and sdpa:
            best_fwd, best_both = min(t[0] for t in sdpa), min(t[1] for t in sdpa)
            print(f"{shape:10s} speedup vs best SDPA: fwd {best_fwd / rows['triton'][0]:.2f}x,"
                  f" fwd+bwd {best_both / rows['triton'][1]:.2f}x; "
                  f"max |triton - sdpa| = {err:.2e}")
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--tokens", type=int, default=65536, help="B·N per batch")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--shapes", nargs="+", metavar="VARIANT@SIZE",
                        help="e.g. B@224 H@224 (replaces --sizes x --variants)")
    args = parser.parse_args(argv)
    for item in args.shapes or []:
        name, _, size = item.partition("@")
        if name not in VARIANTS or not size.isdigit():
            parser.error(f"bad shape '{item}': expected VARIANT@SIZE with VARIANT one of "
                         f"{', '.join(VARIANTS)}, e.g. B@224")
    if torch.cuda.is_available():
        gpu_table(args)
    else:
        cpu_pass()
    return 0


if __name__ == "__main__":
    sys.exit(main())
