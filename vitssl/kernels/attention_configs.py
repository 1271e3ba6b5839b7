"""Launch configurations for the fused-attention kernels.

On CUDA the kernels are autotuned over block sizes, warps and stages, keyed on
(N bucket, padded head dim, dtype). Under the Triton interpreter (CPU) one small
fixed configuration is used: the interpreter runs every program in Python, so
small tiles keep tests fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import triton


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes for one launch: BLOCK_M query rows, BLOCK_N key rows per tile."""

    block_m: int = 32
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 1


INTERPRETER_CONFIG = BlockConfig(block_m=32, block_n=32)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 parses the variable here
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def n_bucket(n: int) -> int:
    """Sequence lengths that share a tuned config: the next power of two (>= 16)."""
    return max(16, triton.next_power_of_2(n))


def head_block(d: int) -> int:
    """The padded tile width for head dim ``d``: next power of two, at least 16."""
    return max(16, triton.next_power_of_2(d))


def _grid(block_ms: tuple[int, ...], block_ns: tuple[int, ...], warps: tuple[int, ...],
          stages: tuple[int, ...]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m in block_ms for n in block_ns for w in warps for s in stages]


def forward_configs() -> list[triton.Config]:
    """Forward: BLOCK_M query rows per program, the key loop steps BLOCK_N rows."""
    return _grid((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))


def backward_kv_configs() -> list[triton.Config]:
    """dK/dV: BLOCK_N key rows per program, the query loop steps BLOCK_M rows."""
    return _grid((32, 64), (64, 128), (4, 8), (2, 3))


def backward_q_configs() -> list[triton.Config]:
    """dQ: BLOCK_M query rows per program, the key loop steps BLOCK_N rows."""
    return _grid((64, 128), (32, 64), (4, 8), (2, 3))


def prune_for_head_dim(configs: list[triton.Config], named_args: dict, **kwargs) -> list[
        triton.Config]:
    """Drop tiles too large for registers/shared memory at wide head dims."""
    width = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * max(c.kwargs["BLOCK_N"], width) <= 128 * 128]
    return kept or configs[:1]
