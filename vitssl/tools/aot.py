"""Compile a Triton kernel ahead of time for a chosen NVIDIA GPU, and read what came out.

No GPU is needed: ``specialise`` binds stand-in tensors through Triton's own
launch binder, so the compiled kernel carries the same specialisation a real
launch would (16-byte-aligned pointers, integers divisible by 16, constexprs);
``compile_specialised`` compiles it for ``GPUTarget("cuda", arch, 32)``.
``inspect`` reads registers, spills and static shared memory from the cubin with
the ``cuobjdump`` that ships in the triton wheel, and the MMA instruction kind
and asynchronous loads of the main loop from the PTX.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

# Largest dynamic shared memory one block may opt into, bytes (CUDA programming guide,
# "Technical Specifications per Compute Capability").
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024,
              100: 227 * 1024, 120: 99 * 1024}

_BASE_ADDRESS = 1 << 21  # allocations start 256-byte (here 2 MiB) aligned


@dataclass(frozen=True)
class StandIn:
    """A tensor as a kernel launch sees it: dtype, shape, strides and its address."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype
    offset: int = 0  # elements from the start of the allocation

    def stride(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self.strides if dim is None else self.strides[dim]

    def data_ptr(self) -> int:
        return _BASE_ADDRESS + self.offset * self.dtype.itemsize

    def ptr_range(self) -> int:
        return 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def permute(self, *order: int) -> StandIn:
        return StandIn(tuple(self.shape[i] for i in order),
                       tuple(self.strides[i] for i in order), self.dtype, self.offset)


def dense(shape: tuple[int, ...], dtype: torch.dtype, offset: int = 0) -> StandIn:
    """A contiguous stand-in tensor."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return StandIn(tuple(shape), tuple(reversed(strides)), dtype, offset)


def specialise(fn: JITFunction, args: tuple, constexprs: dict[str, Any], arch: int
               ) -> tuple:
    """What Triton's launcher of ``fn[grid](*args, **constexprs)`` passes to the compiler on
    an ``sm_<arch>`` GPU: (signature, constexprs, attributes, options).

    ``constexprs`` also takes the launch options (``num_warps``, ``num_stages``).
    """
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **constexprs)
    options, signature, consts, attrs = fn._pack_args(backend, constexprs, bound,
                                                      specialization, options)
    return signature, consts, attrs, options


def compile_specialised(fn: JITFunction, specialised: tuple, arch: int) -> Any:
    """Compile the output of ``specialise``; returns Triton's ``CompiledKernel``
    (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``)."""
    signature, consts, attrs, options = specialised
    return triton.compile(ASTSource(fn, signature, consts, attrs),
                          target=GPUTarget("cuda", arch, 32), options=options.__dict__)


@dataclass(frozen=True)
class Resources:
    """What the compiler made of one kernel."""

    registers: int
    spill_bytes: int  # stack frame + local memory per thread: > 0 means register spills
    shared_bytes: int  # dynamic (Triton's buffers) + static shared memory per block
    mma: str  # "wgmma", "tcgen05", "mma.sync" or "none"
    loop_loads: str  # loads in the main loop: "tma", "cp.async", both joined by "+", or "sync"


def _resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """Registers, spill bytes (stack + local) and static shared memory, per cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if found is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{out}")
    reg, stack, shared, local = map(int, found.groups())
    return reg, stack + local, shared


_LABEL = re.compile(r"^\s*(\$L__BB\d+_\d+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
_MMA_KINDS = (("wgmma", "wgmma.mma_async"), ("tcgen05", "tcgen05.mma"), ("mma.sync", "mma.sync"))
_LOAD_KINDS = (("tma", r"cp\.async\.bulk\.tensor"), ("cp.async", r"cp\.async\.c[ag]"))


def loops(ptx: str) -> list[str]:
    """The PTX of every loop: from a label to the last backward branch that targets it."""
    lines = ptx.splitlines()
    where: dict[str, int] = {}
    ends: dict[str, int] = {}
    for i, line in enumerate(lines):
        if (label := _LABEL.match(line)) is not None:
            where[label.group(1)] = i
        for target in _BRANCH.findall(line):
            if target in where:  # already seen above: a back edge
                ends[target] = i
    return ["\n".join(lines[where[t]:end + 1]) for t, end in ends.items()]


def mma_kind(ptx: str) -> str:
    """The matrix-multiply instruction family in ``ptx``."""
    return next((kind for kind, op in _MMA_KINDS if op in ptx), "none")


def main_loop_loads(ptx: str) -> str:
    """How loops that multiply matrices load their operands: TMA, cp.async, or plain loads."""
    bodies = "\n".join(body for body in loops(ptx) if mma_kind(body) != "none")
    if not bodies:
        return "no loop"
    return "+".join(kind for kind, op in _LOAD_KINDS if re.search(op, bodies)) or "sync"


def inspect(kernel: Any) -> Resources:
    """Registers, spills, shared memory, MMA kind and main-loop loads of a compiled kernel."""
    registers, spills, shared = _resource_usage(kernel.asm["cubin"])
    ptx = kernel.asm["ptx"]
    return Resources(registers, spills, kernel.metadata.shared + shared, mma_kind(ptx),
                     main_loop_loads(ptx))
