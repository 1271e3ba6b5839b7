"""Runs under ``torchrun`` (2 gloo ranks) for tests/test_distributed.py: one launch, many runs.

``python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT``
writes, under OUT, the run directories of the scenarios in ``RUNS`` (each
the same config the test also runs in one process) and ``EMA_RUNS`` (the EMA
objectives under FSDP), a DDP run with drop-path interrupted after its step-2
checkpoint and resumed, the uninterrupted FSDP run of the SIGKILL test, and
``memory-<rank>.json`` with each rank's measured bytes under DDP and FSDP.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vitssl.config import Config, ModelConfig, load_config
from vitssl.models import build_encoder
from vitssl.train import fsdp
from vitssl.train.optim import build_optimizer
from vitssl.train.run import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory import measured_bytes, parameter_shapes, rule_bytes  # noqa: E402

BASE = ["model.depth=1", "model.image_size=16", "train.batch_size=16", "train.steps=4",
        "train.warmup_steps=2", "train.log_every=1", "train.device=cpu", "data.augment=false",
        "summary_eval.enabled=false"]
DINO = ["objective.name=dino", "objective.options.recipe=paper",
        "objective.options.out_dim=64", "objective.options.hidden_dim=32",
        "objective.options.bottleneck_dim=16", "objective.options.num_local=2",
        "objective.options.momentum=0.9", "objective.options.freeze_last_layer=0.3",
        "train.steps=3", "train.grad_clip=0.5"]
# DINO's short-run recipe: head BatchNorm over the global batch, Sinkhorn–Knopp over it.
# KoLeo is per rank (as in DINOv2), so it is left out of the parity run.
DINO_AUTO = [*DINO, "objective.options.recipe=auto", "objective.options.koleo_weight=0"]
RUNS = {
    "ddp": ["monitor.every=2"],  # health checks at steps 2 and 4, the probe at 4
    "ddp-dino": DINO,
    "ddp-dino-auto": DINO_AUTO,
    "fsdp": ["train.strategy=fsdp", "train.grad_clip=0.05", "train.checkpoint_every=2",
             "monitor.every=2"],
    "fsdp-accum": ["train.strategy=fsdp", "train.accum_steps=2", "train.grad_clip=0.05"],
}
# MoCo v3: keys gathered from both ranks, BatchNorm over the global batch, an EMA encoder.
MOCO = ["objective.name=moco-v3", "objective.options.hidden_dim=32",
        "objective.options.out_dim=16", "objective.options.momentum=0.9", "train.steps=3"]
RUNS["ddp-moco"] = MOCO
# iBOT: sample-seeded block masks, a cls and a patch centre all-reduced, an EMA teacher.
IBOT = ["objective.name=ibot", "objective.options.recipe=paper",
        "objective.options.out_dim=64", "objective.options.hidden_dim=32",
        "objective.options.bottleneck_dim=16", "objective.options.num_local=1",
        "objective.options.pred_ratio=0.3", "objective.options.pred_ratio_var=0.1",
        "objective.options.momentum=0.9", "train.steps=3"]
RUNS["ddp-ibot"] = IBOT
# data2vec 2.0: sample-seeded masks of 2 clones per image, an EMA teacher (no decoder noise:
# it is drawn from the global RNG, which differs with the rank count).
D2V = ["objective.name=data2vec2", "objective.options.clone_batch=2",
       "objective.options.noise_std=0", "objective.options.momentum=0.9", "train.steps=3"]
RUNS["ddp-d2v"] = D2V
# A sharded EMA teacher's reference is the replicated one on the same 2 ranks.
EMA_RUNS = {"fsdp-dino": ["train.strategy=fsdp", *DINO],
             "fsdp-moco": ["train.strategy=fsdp", *MOCO],
             "fsdp-ibot": ["train.strategy=fsdp", *IBOT],
             "fsdp-d2v": ["train.strategy=fsdp", *D2V]}
# Drop-path on the second block draws from the global RNG on every rank.
RNG_RUN = ["model.depth=2", "model.drop_path_rate=0.5", "train.checkpoint_every=2",
           "train.keep_checkpoints=2"]
# The uninterrupted run the SIGKILL test's resumed run must repeat bit for bit.
KILL_RUN = ["train.strategy=fsdp", *RNG_RUN, "train.steps=10"]


def config(out: Path, extra: list[str]) -> Config:
    return load_config(None, [f"out={out}", *BASE, *extra])


def interrupted_and_resumed(root: Path, extra: list[str]) -> None:
    """An uninterrupted run, then a copy cut back to its step-2 checkpoint and resumed."""
    full, resumed = root / "rng-full", root / "rng-resumed"
    pretrain(config(full, extra))
    if dist.get_rank() == 0:
        shutil.copytree(full, resumed)
        shutil.rmtree(resumed / "checkpoints" / "step-00000004")
        (resumed / "summary.json").unlink()
    dist.barrier()
    pretrain(config(resumed, extra), resume=True)


def memory(root: Path) -> None:
    """Each rank's bytes after one AdamW step of Ti/16 (depth 2) under DDP and FSDP."""
    cfg = ModelConfig(name="Ti/16", image_size=32, depth=2, attention="reference")
    images = torch.randn(2, 3, 32, 32)
    result = {}
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        encoder = build_encoder(cfg)
        shapes = parameter_shapes(encoder)
        model = DistributedDataParallel(encoder) if strategy == "ddp" else \
            fsdp.shard(encoder, torch.device("cpu"), dist.get_world_size())
        optimizer = build_optimizer(encoder, lr=1e-3, weight_decay=0.05)
        model(images).square().mean().backward()
        optimizer.step()
        result[strategy] = {"measured": measured_bytes(encoder, optimizer),
                            "rule": rule_bytes(shapes, strategy, dist.get_world_size(),
                                               dist.get_rank())}
    (root / f"memory-{dist.get_rank()}.json").write_text(json.dumps(result))


def main(root: Path) -> None:
    dist.init_process_group("gloo")
    try:
        for name, extra in {**RUNS, **EMA_RUNS}.items():
            pretrain(config(root / name, extra))
        interrupted_and_resumed(root, RNG_RUN)
        pretrain(config(root / "fsdp-kill-full", KILL_RUN))
        memory(root)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
