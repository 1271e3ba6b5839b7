"""Per-rank memory of parameters, gradients and AdamW state under DDP and FSDP; activations.

    python benchmarks/memory.py [--variants Ti/16,S/16,B/16,L/16,H/14] [--measure Ti/16,S/16,B/16]
                                [--batch 32] [--output FILE.md]

1. On 2 gloo ranks (spawned here, CPU), each variant in ``--measure`` is built
   at 224 px, wrapped in DDP or sharded with FSDP2 (every block + the root, as
   ``train.strategy=fsdp`` does), trained one AdamW step, and each rank's
   parameter, gradient and optimizer-state bytes are counted from its real
   (sharded) tensors; the count is checked against the sharding rule
   (``rule_bytes`` below) on both ranks. Larger variants and 1/4/8 ranks use the
   rule on the model's real parameter shapes (built on the meta device).
2. Activation memory of one ViT-B/16 block (197 tokens x 768) for a batch of
   ``--batch`` images, with and without activation checkpointing, measured on
   CPU as the resident-memory growth between the block's input and the end of
   its forward (what stays alive for backward, output included), in a fresh
   process whose allocator returns freed memory to the system at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import DTensor

from vitssl.config import ModelConfig
from vitssl.models import build_encoder

KINDS = ("params", "grads", "optimizer")


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def measured_bytes(module: nn.Module, optimizer: torch.optim.Optimizer | None = None
                   ) -> dict[str, int]:
    """This rank's bytes of parameters, gradients and optimizer state tensors.

    The elements this rank's tensors hold (a DTensor's local shard) times their
    element size; padding FSDP adds to uneven shards is not counted.
    """
    params = [p for p in module.parameters()]
    state = optimizer.state.values() if optimizer is not None else []
    return {
        "params": sum(_local_bytes(p) for p in params),
        "grads": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_local_bytes(v) for entry in state for v in entry.values()
                         if isinstance(v, torch.Tensor) and v.ndim > 0),
    }


def shard_rows(rows: int, world_size: int, rank: int) -> int:
    """Rows of a ``rows``-row parameter that FSDP's dim-0 sharding gives ``rank``."""
    chunk = math.ceil(rows / world_size)
    return max(0, min(rows, (rank + 1) * chunk) - rank * chunk)


def rule_bytes(shapes: Iterable[tuple[tuple[int, ...], bool]], strategy: str, world_size: int,
               rank: int = 0, bytes_per_element: int = 4, moments: int = 2) -> dict[str, int]:
    """Bytes rank ``rank`` holds by the sharding rule: DDP holds every tensor whole; FSDP
    gives rank ``r`` chunk ``r`` of ``ceil(rows / world_size)`` rows of each parameter's
    dim 0, and its gradient and AdamW moments follow the parameter's shard.

    ``shapes``: (parameter shape, trained) pairs; frozen parameters have no
    gradient or optimizer state. ``moments``: AdamW keeps two per parameter.
    """
    out = dict.fromkeys(KINDS, 0)
    for shape, trained in shapes:
        rows, rest = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
        if strategy == "fsdp":
            rows = shard_rows(rows, world_size, rank)
        elif strategy != "ddp":
            raise ValueError(f"unknown strategy {strategy!r}")
        size = rows * rest * bytes_per_element
        out["params"] += size
        if trained:
            out["grads"] += size
            out["optimizer"] += moments * size
    return out


def parameter_shapes(module: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    """(global shape, requires_grad) of every parameter of an unsharded or sharded module."""
    return [(tuple(p.shape), p.requires_grad) for p in module.parameters()]


RANKS = (1, 2, 4, 8)
GB = 1e9


def _model(name: str, device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return build_encoder(ModelConfig(name=name, image_size=224, attention="sdpa"))


def _measure_rank(rank: int, port: int, variants: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.nn.parallel import DistributedDataParallel

    from vitssl.train import fsdp
    from vitssl.train.optim import build_optimizer

    results = {}
    for name in variants:
        for strategy in ("ddp", "fsdp"):
            torch.manual_seed(0)
            encoder = _model(name)
            shapes = parameter_shapes(encoder)
            model = DistributedDataParallel(encoder, gradient_as_bucket_view=True) \
                if strategy == "ddp" else fsdp.shard(encoder, torch.device("cpu"), 2)
            optimizer = build_optimizer(encoder, lr=1e-4, weight_decay=0.05)
            model(torch.randn(1, 3, 224, 224)).square().mean().backward()
            optimizer.step()
            measured = measured_bytes(encoder, optimizer)
            rule = rule_bytes(shapes, strategy, 2, rank)
            if measured != rule:
                raise SystemExit(f"rank {rank} {name} {strategy}: measured {measured} "
                                 f"!= rule {rule}")
            results[f"{name} {strategy}"] = measured
            del model, encoder, optimizer
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def measure_two_ranks(variants: list[str], workdir: Path) -> dict[str, dict[str, int]]:
    """Rank 0's measured bytes per "variant strategy" (both ranks checked against the rule)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_measure_rank, args=(port, variants, str(workdir)), nprocs=2, join=True)
    return json.loads((workdir / "rank0.json").read_text())


def activation_bytes(batch: int, checkpointed: bool) -> int:
    """Resident growth over one B/16 block's forward (run in a fresh process)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--activation-worker", str(batch),
           "1" if checkpointed else "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _activation_worker(batch: int, checkpointed: bool) -> None:
    torch.set_num_threads(1)
    block = build_encoder(ModelConfig(name="B/16", image_size=224, depth=1,
                                      attention="sdpa")).blocks[0]
    block.grad_checkpointing = checkpointed
    x = torch.randn(batch, 197, 768, requires_grad=True)
    before = _rss()
    y = block(x)
    held = _rss() - before
    y.sum().backward()
    print(held)


def _fmt(n: float) -> str:
    return f"{n / GB:.2f}"


def table(variants: list[str], measured: dict[str, dict[str, int]]) -> str:
    """Per-rank GB of params + grads + AdamW state by strategy and world size."""
    head = ("| model | params | DDP (any ranks) | " +
            " | ".join(f"FSDP {n}" for n in RANKS) + " | source |")
    lines = [head, "|" + "---|" * (len(RANKS) + 4)]
    for name in variants:
        shapes = parameter_shapes(_model(name, "meta"))
        count = sum(torch.Size(s).numel() for s, _ in shapes)
        ddp = sum(rule_bytes(shapes, "ddp", 1).values())
        fsdp = [sum(rule_bytes(shapes, "fsdp", n, 0).values()) for n in RANKS]
        source = "rule"
        if f"{name} ddp" in measured:
            two = sum(measured[f"{name} fsdp"].values())
            assert two == fsdp[1] and sum(measured[f"{name} ddp"].values()) == ddp
            source = "measured on 2 ranks = rule; rule for 1/4/8"
        lines.append(f"| {name} | {count / 1e6:.0f}M | {_fmt(ddp)} | " +
                     " | ".join(_fmt(v) for v in fsdp) + f" | {source} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--activation-worker":
        _activation_worker(int(sys.argv[2]), sys.argv[3] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="Ti/16,S/16,B/16,L/16,H/14")
    parser.add_argument("--measure", default="Ti/16,S/16,B/16",
                        help="variants trained one step on 2 gloo ranks")
    parser.add_argument("--batch", type=int, default=32, help="images for the activation row")
    parser.add_argument("--output", help="also write the tables to this markdown file")
    args = parser.parse_args()
    variants = args.variants.split(",")
    measure = [v for v in args.measure.split(",") if v]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"vitssl-memory-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    measured = measure_two_ranks(measure, workdir) if measure else {}
    lines = ["Per-rank GB of fp32 parameters + gradients + AdamW moments "
             f"({', '.join(KINDS)}), 224 px:", "", table(variants, measured), ""]
    plain, ckpt = activation_bytes(args.batch, False), activation_bytes(args.batch, True)
    lines += [f"Activations of one ViT-B/16 block kept for backward, batch {args.batch} "
              f"(197 x 768 tokens, fp32, CPU):", "",
              "| activation checkpointing | MB held after forward | per image (MB) |",
              "|---|---|---|",
              f"| off | {plain / 1e6:.0f} | {plain / args.batch / 1e6:.1f} |",
              f"| on | {ckpt / 1e6:.0f} | {ckpt / args.batch / 1e6:.1f} |"]
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
