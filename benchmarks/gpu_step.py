"""One ViT-B/16 pretraining step on a CUDA GPU: vitssl (Triton attention, and SDPA) vs timm.

A step is forward under bf16 autocast, a scalar loss on the pooled features,
backward and an AdamW step, on one batch of random 224 px images. The three
models are built with the same configuration and timed in alternation with CUDA
events (median ms per step of ``--repeats`` repeats of ``--iters`` steps). Before
timing, the Triton and SDPA variants of vitssl are checked to give the same loss.

    python benchmarks/gpu_step.py [--batch-size 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Callable

import torch
from torch import nn

from vitssl.config import ModelConfig
from vitssl.models import build_encoder, parse_model_name


def build(name: str, image_size: int) -> dict[str, nn.Module]:
    """vitssl on Triton, vitssl on SDPA (same weights) and timm's VisionTransformer."""
    import timm.models.vision_transformer as tvit

    torch.manual_seed(0)
    ours = build_encoder(ModelConfig(name=name, image_size=image_size, attention="triton"))
    sdpa = copy.deepcopy(ours)
    sdpa.set_attention("sdpa")
    variant, patch = parse_model_name(name)
    timm = tvit.VisionTransformer(
        img_size=image_size, patch_size=patch, embed_dim=variant.embed_dim,
        depth=variant.depth, num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_dim / variant.embed_dim, num_classes=0, global_pool="token")
    return {"vitssl-triton": ours.cuda(), "vitssl-sdpa": sdpa.cuda(), "timm-sdpa": timm.cuda()}


def train_step(model: nn.Module, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(images).float().square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def timed(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, iters: int,
          warmup: int) -> dict[str, float]:
    """Median ms per step of each function, in alternation, with CUDA events."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times[key].append(start.elapsed_time(end) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="B/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_step: needs a CUDA device", file=sys.stderr)
        return 2
    models = build(args.model, args.image_size)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = models["vitssl-triton"](images).float()
        b = models["vitssl-sdpa"](images).float()
    diff = (a - b).abs().max().item()
    steps = {k: train_step(m, images) for k, m in models.items()}
    ms = timed(steps, args.repeats, args.iters, args.warmup)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "model": args.model, "image_size": args.image_size, "batch": args.batch_size,
              "precision": "bf16 autocast", "ms_per_step": ms,
              "images_per_s": {k: args.batch_size / t * 1e3 for k, t in ms.items()},
              "max_abs_diff_triton_vs_sdpa_features": diff,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    print(f"{result['device']}  {args.model}@{args.image_size}  batch {args.batch_size}  "
          f"bf16 autocast  median of {args.repeats}x{args.iters} steps")
    for k, t in ms.items():
        print(f"{k:14s} {t:8.2f} ms/step {args.batch_size / t * 1e3:8.1f} img/s "
              f"({ms['timm-sdpa'] / t:.2f}x timm)")
    print(f"max |triton - sdpa| of pooled features (bf16): {diff:.3g}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
