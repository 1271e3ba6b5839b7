"""One ViT-B/16 supervised training step on a CUDA GPU: vitssl (Triton, and SDPA) vs timm.

vitssl's step is the library's own training step (``benchmarks/loop_step.py``:
the run ``vitssl pretrain --objective supervised`` builds, bf16 autocast,
gradient clipping at 1.0, AdamW) on one batch of random 224 px images held on
the device; timm's is the same step written out around its
``VisionTransformer`` (cross-entropy on a linear head, clipping, AdamW). Both
are timed in alternation with CUDA events (median ms per step of ``--repeats``
repeats of ``--iters`` steps). Before timing, the Triton and SDPA variants of
vitssl are checked to give the same features.

    python benchmarks/gpu_step.py [--batch-size 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from loop_step import loop_step

from vitssl.models import parse_model_name


def vitssl_step(name: str, image_size: int, batch_size: int, attention: str) -> tuple:
    sets = [f"model.name={name}", f"model.image_size={image_size}", "model.depth=null",
            "model.pool=token", "model.fc_norm=false", f"model.attention={attention}",
            "train.precision=bf16", "objective.options.pre_logits=false", "train.seed=0"]
    return loop_step("supervised", sets, batch_size, device="cuda")


def timm_step(name: str, image_size: int, batch_size: int) -> Callable[[], None]:
    """The same supervised step around timm's VisionTransformer."""
    import timm.models.vision_transformer as tvit

    variant, patch = parse_model_name(name)
    torch.manual_seed(0)
    model = tvit.VisionTransformer(
        img_size=image_size, patch_size=patch, embed_dim=variant.embed_dim,
        depth=variant.depth, num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_dim / variant.embed_dim, num_classes=10,
        global_pool="token").cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(batch_size, 3, image_size, image_size, device="cuda")
    labels = torch.randint(0, 10, (batch_size,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

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
    triton, triton_run = vitssl_step(args.model, args.image_size, args.batch_size, "triton")
    sdpa, sdpa_run = vitssl_step(args.model, args.image_size, args.batch_size, "sdpa")
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = triton_run.objective.encoder(images).float()
        b = sdpa_run.objective.encoder(images).float()
    diff = (a - b).abs().max().item()
    steps = {"vitssl-triton": triton, "vitssl-sdpa": sdpa,
             "timm-sdpa": timm_step(args.model, args.image_size, args.batch_size)}
    ms = timed(steps, args.repeats, args.iters, args.warmup)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "model": args.model, "image_size": args.image_size, "batch": args.batch_size,
              "precision": "bf16 autocast", "step": "supervised, clip 1.0, AdamW",
              "ms_per_step": ms,
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
