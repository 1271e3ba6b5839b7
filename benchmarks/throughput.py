"""Training-step and inference throughput: vitssl's encoder vs timm's VisionTransformer.

Both models are built with the same configuration and run on the same batch with
the same thread count; timed runs alternate between the two (interleaved), and
the table reports the median images/s of each and the ratio vitssl / timm.

    python benchmarks/throughput.py                       # Ti/16@224 and Ti/4@32, fp32
    python benchmarks/throughput.py --precision fp32,bf16 # add bf16 autocast rows
    python benchmarks/throughput.py --configs Ti/4@32 --stem hybrid --repeats 3

A training step is forward, a scalar loss on the pooled features, backward and
an AdamW step. With ``--precision bf16`` both models run under bf16 autocast,
and the extra column compares vitssl in bf16 with timm in float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vitssl.config import ModelConfig  # noqa: E402
from vitssl.models import build_encoder, parse_model_name  # noqa: E402

DEFAULT_CONFIGS = {"Ti/16@224": 8, "Ti/4@32": 16}  # config -> default batch size


def build_pair(name: str, image_size: int, stem: str, depth: int | None
               ) -> tuple[nn.Module, nn.Module | None]:
    ours = build_encoder(ModelConfig(name=name, image_size=image_size, stem=stem, depth=depth))
    if stem != "patch":
        return ours, None  # timm has no equivalent of our stem plugins
    import timm.models.vision_transformer as tvit

    variant, patch = parse_model_name(name)
    theirs = tvit.VisionTransformer(
        img_size=image_size, patch_size=patch, embed_dim=variant.embed_dim,
        depth=depth or variant.depth, num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_dim / variant.embed_dim, num_classes=0, global_pool="token")
    return ours, theirs


def train_step(model: nn.Module, images: torch.Tensor, dtype: torch.dtype | None
               ) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(images).float().square().mean()
        loss.backward()
        opt.step()

    return step


def infer_step(model: nn.Module, images: torch.Tensor, dtype: torch.dtype | None
               ) -> Callable[[], None]:
    model.eval()

    @torch.inference_mode()
    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            model(images)

    return step


def interleaved(fns: dict[str, Callable[[], None]], batch: int, repeats: int, warmup: int,
                iters: int) -> dict[str, float]:
    """Median images/s of each function, timing them in alternation."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            rates[key].append(batch * iters / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated MODEL@SIZE, e.g. Ti/16@224,Ti/4@32")
    parser.add_argument("--batch-size", type=int, help="override every config's batch size")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--stem", default="patch", help="vitssl stem plugin (timm: patch only)")
    parser.add_argument("--depth", type=int, help="override the layer count of both models")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=1, help="steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    print(f"threads {args.threads}, repeats {args.repeats} x {args.iters} steps (median), "
          f"stem {args.stem}, torch {torch.__version__}")
    header = (f"{'config':<11} {'batch':>5} {'mode':<6} {'prec':<5} {'vitssl img/s':>12} "
              f"{'timm img/s':>11} {'ratio':>6} {'vs timm fp32':>12}")
    print(header)
    print("-" * len(header))
    for item in args.configs.split(","):
        name, _, size = item.strip().partition("@")
        image_size = int(size or 224)
        batch = args.batch_size or DEFAULT_CONFIGS.get(item.strip(), 32)
        ours, theirs = build_pair(name, image_size, args.stem, args.depth)
        images = torch.randn(batch, 3, image_size, image_size)
        for mode, make in (("train", train_step), ("infer", infer_step)):
            base_timm = None
            for prec in precisions:
                fns = {"ours": make(ours, images, dtypes[prec])}
                if theirs is not None:
                    fns["timm"] = make(theirs, images, dtypes[prec])
                    if prec != "fp32":
                        fns["timm_fp32"] = make(theirs, images, None)
                rates = interleaved(fns, batch, args.repeats, args.warmup, args.iters)
                timm_rate = rates.get("timm")
                base_timm = rates.get("timm_fp32", timm_rate if prec == "fp32" else base_timm)
                ratio = f"{rates['ours'] / timm_rate:6.2f}" if timm_rate else f"{'n/a':>6}"
                vs32 = f"{rates['ours'] / base_timm:12.2f}" if base_timm else f"{'n/a':>12}"
                timm_txt = f"{timm_rate:11.1f}" if timm_rate else f"{'n/a':>11}"
                print(f"{item.strip():<11} {batch:>5} {mode:<6} {prec:<5} "
                      f"{rates['ours']:12.1f} {timm_txt} {ratio} {vs32}", flush=True)


if __name__ == "__main__":
    main()
