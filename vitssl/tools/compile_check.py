"""Compile every fused-attention kernel for real GPUs on any machine, and check the result.

    python -m vitssl.tools.compile_check [--dump DIR] [--arch 90 ...] [--head-dims 64 ...]

Every configuration the autotuner may pick at ViT lengths, compiled with the
specialisation a real launch applies; it exits 1 when a kernel on sm_80 or sm_90
fails to compile, spills, overflows shared memory, or on sm_90 lacks wgmma or
asynchronous main-loop loads (sm_100: advisory). What it covers: docs/gpu.md.
Needs the triton package, no GPU; must run without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

HEAD_DIMS = (32, 64, 80, 128)
DTYPES = ("fp16", "bf16")
ARCHS = (80, 90, 100)
VIT_LENGTHS = (197, 257, 577, 1025)  # B/16@224, H/14@224, B/16@384, H/14@448 (N = 1 + grid²)
LAYOUTS = ("contiguous", "packed")
KERNELS = ("fwd", "bwd_dkdv", "bwd_dq", "bwd_delta")
# Findings on these fail the check; sm_100 (tcgen05, newer ptxas) is compiled and reported.
GATING_ARCHS = (80, 90)
MMA_KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")  # the ones with a matmul main loop


@dataclass(frozen=True)
class Job:
    """One compile: a kernel and its tiles for one head dim, dtype, architecture and length."""

    kernel: str
    arch: int
    head_dim: int
    dtype: str
    config: str  # BlockConfig.name
    layouts: tuple[str, ...]
    length: int


@dataclass(frozen=True)
class Row:
    """A compiled job and what the check found."""

    job: Job
    res: Any  # aot.Resources; None when no layout compiled
    problems: tuple[str, ...] = ()


def _torch_dtype(name: str):  # noqa: ANN202
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[name]


def launch(kernel: str, layout: str, head_dim: int, dtype: str, length: int,
           batch: int = 2, heads: int = 12) -> tuple:
    """(jit function, args, constexprs) of one launch on stand-in tensors of ``layout``."""
    import torch

    from vitssl.kernels import triton_attention as ta
    from vitssl.tools.aot import StandIn, dense

    dt, b, h, n, d = _torch_dtype(dtype), batch, heads, length, head_dim
    if layout == "packed":  # views of one (B, N, 3·H·D) projection, as the encoder makes them
        row = 3 * h * d
        q, k, v = (StandIn((b, h, n, d), (n * row, d, row, 1), dt, offset=i * h * d)
                   for i in range(3))
        out = dense((b, n, h, d), dt).permute(0, 2, 1, 3)  # as empty_like(q) lays it out
    else:
        q, k, v = (dense((b, h, n, d), dt) for _ in range(3))
        out = dense((b, h, n, d), dt)
    stats = dense((b * h, n), torch.float32)
    tensors = {"fwd": (q, k, v, out, stats), "bwd_delta": (out, out, stats),
               "bwd_dkdv": (q, k, v, out, stats, stats, out, out),
               "bwd_dq": (q, k, v, out, stats, stats, out)}[kernel]
    args, consts = ta.launch_args(kernel, tensors, d ** -0.5)
    return ta.KERNELS[kernel], args, consts


def jobs(archs: tuple[int, ...], head_dims: tuple[int, ...], dtypes: tuple[str, ...],
         kernels: tuple[str, ...]) -> list[Job]:
    """Every (kernel, config, arch, D, dtype) the autotuner may use at ViT lengths."""
    from vitssl.kernels import attention_configs as ac

    found: dict[tuple, Job] = {}
    for kernel, arch, d, dtype, n in itertools.product(kernels, archs, head_dims, dtypes,
                                                       VIT_LENGTHS):
        if kernel == "bwd_delta":
            names = [f"m{ac.DELTA_BLOCK_M}"]
        else:
            names = [c.name for c in ac.tuned_configs(kernel, ac.tile(n), ac.tile(d),
                                                      _torch_dtype(dtype).itemsize, arch)]
        for name in names:
            found.setdefault((kernel, arch, d, dtype, name),
                             Job(kernel, arch, d, dtype, name, LAYOUTS, n))
    return list(found.values())


def run_job(job: Job, dump: str | None) -> Row:
    """Compile ``job`` for each layout (identical specialisations compile once) and check."""
    from vitssl.kernels.attention_configs import BlockConfig
    from vitssl.tools import aot

    problems: list[str] = []
    res = None
    done: dict[str, str] = {}  # specialisation -> the layout that compiled it
    for layout in job.layouts:
        fn, args, consts = launch(job.kernel, layout, job.head_dim, job.dtype, job.length)
        if job.kernel == "bwd_delta":  # one fixed config, m<BLOCK_M>
            consts["BLOCK_M"] = int(job.config.removeprefix("m"))
        else:
            consts.update(BlockConfig.parse(job.config).launch_kwargs())
        try:
            spec = aot.specialise(fn, args, consts, job.arch)
            key = repr(spec[1:3])  # constexprs and attributes (divisibility hints)
            if key in done:
                continue  # the same kernel a real launch would reuse
            done[key] = layout
            kernel = aot.compile_specialised(fn, spec, job.arch)
        except Exception as exc:  # noqa: BLE001  any compiler error is a finding
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{layout}: compile failed: {first[:160]}")
            continue
        got = aot.inspect(kernel)
        if res is not None and got != res:
            problems.append(f"{layout} specialises differently and compiles to {got}")
        res = res or got
        if dump:
            stem = os.path.join(dump, f"{job.kernel}-{_label(job)}-sm{job.arch}")
            suffix = "" if len(done) == 1 else f"-{layout}"
            for ext, mode in (("cubin", "wb"), ("ptx", "w")):
                with open(f"{stem}{suffix}.{ext}", mode) as f:
                    f.write(kernel.asm[ext])
    return Row(job, res, tuple(problems + (findings(job, res) if res else [])))


def findings(job: Job, res) -> list[str]:  # noqa: ANN001
    """What is wrong with a compiled kernel, by the check's rules."""
    from vitssl.tools.aot import MAX_SHARED

    out = []
    if res.spill_bytes:
        out.append(f"spills ({res.spill_bytes} bytes of stack/local per thread)")
    if res.shared_bytes > MAX_SHARED[job.arch]:
        out.append(f"shared memory {res.shared_bytes} B > {MAX_SHARED[job.arch]} B on "
                   f"sm_{job.arch}")
    if job.arch == 90 and job.kernel in MMA_KERNELS:
        if res.mma != "wgmma":
            out.append(f"no wgmma on sm_90 (found {res.mma})")
        if "tma" not in res.loop_loads and "cp.async" not in res.loop_loads:
            out.append(f"main loop loads are not asynchronous ({res.loop_loads})")
    return out


def _label(job: Job) -> str:
    return f"d{job.head_dim}-{job.dtype}-{job.config}"


def arch_supported(arch: int) -> str | None:
    """None if the bundled toolchain compiles for ``sm_<arch>``, else why not."""
    from vitssl.kernels.attention_configs import DELTA_BLOCK_M

    row = run_job(Job("bwd_delta", arch, 64, "fp16", f"m{DELTA_BLOCK_M}", ("contiguous",), 197),
                  None)
    return "; ".join(row.problems) if any("compile failed" in p for p in row.problems) else None


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    from vitssl.tools.aot import Resources

    lines = ["| kernel | config | arch | regs | spill B | smem KB | MMA | main-loop loads "
             "| status |\n|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        res = r.res or Resources(0, 0, 0, "-", "-")
        verdict = "FAIL" if r.job.arch in GATING_ARCHS else "advisory"
        status = "ok" if not r.problems else f"{verdict}: " + "; ".join(r.problems)
        lines.append(f"| {r.job.kernel} | {_label(r.job)} | sm_{r.job.arch} | {res.registers} "
                     f"| {res.spill_bytes} | {res.shared_bytes / 1024:.1f} | {res.mma} "
                     f"| {res.loop_loads} | {status} |")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitssl.tools.compile_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dump", metavar="DIR", help="write cubin and PTX files here")
    parser.add_argument("--arch", type=_ints, default=ARCHS, help="e.g. 80,90 (default: all)")
    parser.add_argument("--head-dims", type=_ints, default=HEAD_DIMS)
    parser.add_argument("--dtypes", type=lambda s: tuple(s.split(",")), default=DTYPES)
    parser.add_argument("--kernels", type=lambda s: tuple(s.split(",")), default=KERNELS)
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel compiler processes")
    args = parser.parse_args(argv)
    bad = [k for k in args.kernels if k not in KERNELS] + [
        t for t in args.dtypes if t not in DTYPES]
    if bad:
        parser.error(f"unknown kernel or dtype {bad}; accepted: {KERNELS}, {DTYPES}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET: interpreted kernels cannot be compiled",
              file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError as err:
        print(f"compile_check: needs the triton package ({err})", file=sys.stderr)
        return 2
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)

    archs = []
    for arch in args.arch:
        if arch not in ARCHS:
            parser.error(f"unknown arch {arch}; accepted: 80, 90, 100")
        reason = arch_supported(arch)
        if reason is None:
            archs.append(arch)
        elif arch == 100:
            print(f"sm_100 skipped: the bundled toolchain does not compile for it ({reason})")
        else:
            print(f"compile_check: sm_{arch}: {reason}", file=sys.stderr)
            return 1
    todo = jobs(tuple(archs), args.head_dims, args.dtypes, args.kernels)
    start = time.perf_counter()
    print(f"compiling {len(todo)} kernels x {len(LAYOUTS)} layouts on {args.jobs} processes",
          file=sys.stderr, flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_job, todo, [args.dump] * len(todo)))
    print(table(rows))
    failed = [r for r in rows if r.problems and r.job.arch in GATING_ARCHS]
    advisory = [r for r in rows if r.problems and r.job.arch not in GATING_ARCHS]
    print(f"\n{len(rows)} kernels checked in {time.perf_counter() - start:.0f} s: "
          f"{len(rows) - len(failed) - len(advisory)} ok, {len(failed)} failed"
          + (f", {len(advisory)} with advisory findings on sm_100" if advisory else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
