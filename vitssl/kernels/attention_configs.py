"""Launch configurations for the fused-attention kernels.

On CUDA the kernels are autotuned over a few block sizes, warps and stages per
(kernel, N bucket, padded head dim, dtype, architecture): the tuned lists below,
each entry checked by ``python -m vitssl.tools.compile_check``; other keys
(fp32, fp64, head-dim tiles 16 and 256) use a small generic grid. Under the
Triton interpreter (CPU) one small fixed configuration is used: the interpreter
runs every program in Python, so small tiles keep tests fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes for one launch: BLOCK_M query rows, BLOCK_N key rows per tile."""

    block_m: int = 32
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 1

    def launch_kwargs(self) -> dict:
        """The kwargs a launch passes: BLOCK_M, BLOCK_N, num_warps, num_stages."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n,
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    @property
    def name(self) -> str:
        """A short label, e.g. ``m128n64w8s3``."""
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


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
          stages: tuple[int, ...]) -> list[BlockConfig]:
    return [BlockConfig(m, n, w, s) for m in block_ms for n in block_ns for w in warps
            for s in stages]


# Tuned candidates per (kernel, head-dim tile, family): for fp16/bf16 at head-dim tiles 32,
# 64 and 128 (D = 80 pads to 128). Every entry compiles without spills, within shared
# memory, with wgmma and cp.async main loops on sm_90: `python -m vitssl.tools.compile_check`
# checks exactly these (its table is in benchmarks/RESULTS.md). Notes from that table:
# 4-warp tiles of 128 x 128 (fwd) or with a 128-row side (backward) spill at D = 128;
# BLOCK_M = 32 in the forward loses wgmma. ViT lengths (197, 257, 577, 1025) are never
# block multiples, so short sequences also get 32/64-row tiles that waste less of the tail.
_TUNED: dict[tuple[str, int], list[BlockConfig]] = {
    ("fwd", 32): [BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 3),
                  BlockConfig(128, 128, 8, 2)],
    ("fwd", 64): [BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 3),
                  BlockConfig(128, 128, 8, 2)],
    ("fwd", 128): [BlockConfig(128, 64, 8, 2), BlockConfig(64, 64, 4, 3),
                   BlockConfig(128, 32, 8, 3)],
    ("bwd_dkdv", 32): [BlockConfig(64, 64, 4, 2), BlockConfig(32, 64, 4, 3),
                       BlockConfig(64, 128, 8, 2)],
    ("bwd_dkdv", 64): [BlockConfig(64, 64, 4, 2), BlockConfig(32, 64, 4, 3),
                       BlockConfig(64, 128, 8, 2)],
    ("bwd_dkdv", 128): [BlockConfig(32, 64, 8, 2), BlockConfig(64, 64, 8, 2),
                        BlockConfig(32, 128, 8, 2)],
    ("bwd_dq", 32): [BlockConfig(64, 64, 4, 2), BlockConfig(128, 64, 8, 2),
                     BlockConfig(64, 32, 4, 3)],
    ("bwd_dq", 64): [BlockConfig(64, 64, 4, 2), BlockConfig(128, 64, 8, 2),
                     BlockConfig(64, 32, 4, 3)],
    ("bwd_dq", 128): [BlockConfig(64, 32, 4, 2), BlockConfig(64, 64, 8, 2),
                      BlockConfig(128, 32, 8, 2)],
}
# sm_80 (mma.sync) needs more registers for the same tiles: these replace the lists above.
_TUNED_AMPERE: dict[tuple[str, int], list[BlockConfig]] = {
    ("fwd", 32): [BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 3),
                  BlockConfig(128, 128, 8, 3)],
    ("fwd", 64): [BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 3),
                  BlockConfig(128, 128, 8, 3)],
    ("bwd_dkdv", 32): [BlockConfig(32, 64, 4, 3), BlockConfig(32, 64, 8, 2),
                       BlockConfig(32, 128, 8, 2)],
    ("bwd_dkdv", 64): [BlockConfig(32, 64, 4, 3), BlockConfig(32, 64, 8, 2),
                       BlockConfig(32, 128, 8, 2)],
    ("bwd_dkdv", 128): [BlockConfig(32, 64, 8, 2), BlockConfig(64, 64, 8, 2)],
    ("bwd_dq", 32): [BlockConfig(64, 32, 4, 3), BlockConfig(64, 32, 8, 2),
                     BlockConfig(128, 32, 8, 2)],
    ("bwd_dq", 64): [BlockConfig(64, 32, 4, 3), BlockConfig(64, 32, 8, 2),
                     BlockConfig(128, 32, 8, 2)],
}
_SHORT = 256  # N buckets up to here: the tail tile is a large share of the work


def tuned_configs(kernel: str, bucket: int, block_d: int, itemsize: int, arch: int
                  ) -> list[BlockConfig]:
    """The configs the autotuner tries for one key; [] where the generic grid applies.

    ``kernel``: "fwd", "bwd_dkdv" or "bwd_dq"; ``bucket``: ``n_bucket(N)``;
    ``block_d``: ``head_block(D)``; ``itemsize``: bytes per element of q; ``arch``:
    the compute capability as 80, 90, ...
    """
    if itemsize != 2 or arch < 80 or (kernel, block_d) not in _TUNED:
        return []
    table = _TUNED_AMPERE if arch < 90 and (kernel, block_d) in _TUNED_AMPERE else _TUNED
    configs = list(table[(kernel, block_d)])
    if bucket <= _SHORT:  # drop the widest tile: it is mostly padding at N <= 256
        configs = [c for c in configs if c.block_m * c.block_n < 128 * 128]
    return configs


def _generic(kernel: str) -> list[BlockConfig]:
    """Configs for keys without a tuned list (fp32/fp64, head-dim tiles 16 and 256)."""
    if kernel == "fwd":
        return _grid((64, 128), (32, 64), (4, 8), (2, 3))
    if kernel == "bwd_dkdv":
        return _grid((32, 64), (64,), (4, 8), (2,))
    return _grid((64,), (32, 64), (4, 8), (2,))


def autotune_configs(kernel: str) -> list[triton.Config]:
    """Every config the autotuner of ``kernel`` knows; ``prune`` picks per key."""
    seen = dict.fromkeys(c for table in (_TUNED, _TUNED_AMPERE) for (name, _), cs in table.items()
                         if name == kernel for c in cs)
    seen.update(dict.fromkeys(_generic(kernel)))
    return [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n},
                          num_warps=c.num_warps, num_stages=c.num_stages) for c in seen]


def _as_block(config: triton.Config) -> BlockConfig:
    return BlockConfig(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps,
                       config.num_stages)


def pruner(kernel: str):  # noqa: ANN201
    """``early_config_prune`` for ``kernel``: the tuned list of the launch's key."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[
            triton.Config]:
        q = named_args["Q"]
        block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
        bucket = named_args.get("N_BUCKET", kwargs.get("N_BUCKET", 256))
        major, minor = torch.cuda.get_device_capability(q.device) if q.is_cuda else (0, 0)
        wanted = tuned_configs(kernel, bucket, block_d, q.element_size(), 10 * major + minor)
        if not wanted:
            wanted = [c for c in _generic(kernel)
                      if c.block_m * max(c.block_n, block_d) <= 128 * 128] or _generic(kernel)[:1]
        kept = [c for c in configs if _as_block(c) in wanted]
        return kept or configs[:1]

    return prune
