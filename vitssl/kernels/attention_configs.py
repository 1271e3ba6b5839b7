"""Launch configurations for the fused-attention kernels.

On CUDA the kernels are autotuned per (kernel, N bucket, head-dim tile, dtype,
architecture) over the tuned lists below; keys without one (fp32, fp64, tiles
16 and 256) use a small generic grid. Under the Triton interpreter (CPU) one
small fixed configuration keeps tests fast.
"""

from __future__ import annotations

import itertools
import os
import re
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

    @classmethod
    def parse(cls, name: str) -> BlockConfig:
        """The config a ``name`` such as ``m128n64w8s3`` stands for."""
        return cls(*map(int, re.fullmatch(r"m(\d+)n(\d+)w(\d+)s(\d+)", name).groups()))

    def launch_kwargs(self) -> dict:
        """The kwargs a launch passes: BLOCK_M, BLOCK_N, num_warps, num_stages."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n,
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    @property
    def name(self) -> str:
        """A short label, e.g. ``m128n64w8s3``."""
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


INTERPRETER_CONFIG = BlockConfig(block_m=32, block_n=32)
DELTA_BLOCK_M = 64  # rows per program of the delta kernel (no tuning: it is a row reduction)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 parses the variable here
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def tile(n: int) -> int:
    """The next power of two, at least 16: the padded head-dim tile, and the N bucket
    (sequence lengths that share a tuned config)."""
    return max(16, triton.next_power_of_2(n))


def _names(names: str) -> list[BlockConfig]:
    return [BlockConfig.parse(name) for name in names.split()]


def _grid(*axes: tuple[int, ...]) -> list[BlockConfig]:
    return [BlockConfig(*c) for c in itertools.product(*axes)]


# Tuned candidates per (kernel, head-dim tile) for fp16/bf16; tile 32 uses tile 64's list and
# D = 80 pads to 128. Each compiles without spills, within shared memory, with wgmma and
# cp.async main loops on sm_90: `python -m vitssl.tools.compile_check` checks exactly these
# (benchmarks/RESULTS.md, "Attention kernel", says why these).
_TUNED: dict[tuple[str, int], list[BlockConfig]] = {
    ("fwd", 64): _names("m128n64w8s3 m64n64w4s3 m128n128w8s2"),
    ("fwd", 128): _names("m128n64w8s2 m64n64w4s3 m128n32w8s3"),
    ("bwd_dkdv", 64): _names("m64n64w4s2 m32n64w4s3 m64n128w8s2"),
    ("bwd_dkdv", 128): _names("m32n64w8s2 m64n64w8s2 m32n128w8s2"),
    ("bwd_dq", 64): _names("m64n64w4s2 m128n64w8s2 m64n32w4s3"),
    ("bwd_dq", 128): _names("m64n32w4s2 m64n64w8s2 m128n32w8s2"),
}
# sm_80 (mma.sync) needs more registers for the same tiles: these replace the lists above.
_TUNED_AMPERE: dict[tuple[str, int], list[BlockConfig]] = {
    ("fwd", 64): _names("m128n64w8s3 m64n64w4s3 m128n128w8s3"),
    ("bwd_dkdv", 64): _names("m32n64w4s3 m32n64w8s2 m32n128w8s2"),
    ("bwd_dkdv", 128): _names("m32n64w8s2 m64n64w8s2"),
    ("bwd_dq", 64): _names("m64n32w4s3 m64n32w8s2 m128n32w8s2"),
}
_GENERIC = {
    "fwd": _grid((64, 128), (32, 64), (4, 8), (2, 3)),
    "bwd_dkdv": _grid((32, 64), (64,), (4, 8), (2,)),
    "bwd_dq": _grid((64,), (32, 64), (4, 8), (2,)),
}
_SHORT = 256  # N buckets up to here: the tail tile is a large share of the work


def tuned_configs(kernel: str, bucket: int, block_d: int, itemsize: int, arch: int
                  ) -> list[BlockConfig]:
    """The configs the autotuner tries for one key; [] where the generic grid applies.

    ``kernel``: "fwd", "bwd_dkdv" or "bwd_dq"; ``bucket``: ``tile(N)``; ``block_d``:
    ``tile(D)``; ``itemsize``: bytes per element of q; ``arch``: the compute capability
    as 80, 90, ...
    """
    key = (kernel, 64 if block_d == 32 else block_d)
    if itemsize != 2 or arch < 80 or key not in _TUNED:
        return []
    configs = list((_TUNED_AMPERE if arch < 90 and key in _TUNED_AMPERE else _TUNED)[key])
    if bucket <= _SHORT:  # drop the widest tile: it is mostly padding at N <= 256
        configs = [c for c in configs if c.block_m * c.block_n < 128 * 128]
    return configs


def autotune_configs(kernel: str) -> list[triton.Config]:
    """Every config the autotuner of ``kernel`` knows; ``prune`` picks per key."""
    seen = dict.fromkeys(c for table in (_TUNED, _TUNED_AMPERE) for (name, _), cs in table.items()
                         if name == kernel for c in cs)
    seen.update(dict.fromkeys(_GENERIC[kernel]))
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
            wanted = [c for c in _GENERIC[kernel]
                      if c.block_m * max(c.block_n, block_d) <= 128 * 128] or _GENERIC[kernel][:1]
        kept = [c for c in configs if _as_block(c) in wanted]
        return kept or configs[:1]

    return prune
