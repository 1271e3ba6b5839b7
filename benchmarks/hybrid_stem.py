"""Parameters and throughput of a plain ViT against its hybrid (ResNet stem) counterpart.

Both encoders are built from the same variant, run on the same batch with the
same thread count, and timed in alternation (see ``throughput.interleaved``);
the table reports parameter counts, tokens, median images/s and the ratio
hybrid / plain for a training step (forward, backward, AdamW) and inference.

    python benchmarks/hybrid_stem.py                                  # B/16 vs R50+B/16 @224
    python benchmarks/hybrid_stem.py --model S/32 --stem resnet26-hybrid --batch-size 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import infer_step, interleaved, train_step  # noqa: E402

from vitssl.config import ModelConfig  # noqa: E402
from vitssl.models import build_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="B/16")
    parser.add_argument("--stem", default="resnet50-hybrid", help="hybrid stem plugin")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=1, help="steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--modes", default="infer,train", help="comma-separated: infer, train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {stem: build_encoder(ModelConfig(name=args.model, image_size=args.image_size,
                                              stem=stem))
              for stem in ("patch", args.stem)}
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    print(f"{args.model} @ {args.image_size}px, batch {args.batch_size}, threads "
          f"{args.threads}, repeats {args.repeats} x {args.iters} (median), torch "
          f"{torch.__version__}")
    for stem, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        stem_params = sum(p.numel() for p in model.patch_embed.parameters())
        grid = model.grid_size
        print(f"  {stem:<20} params {params / 1e6:7.2f}M (stem {stem_params / 1e6:6.2f}M), "
              f"tokens {grid[0] * grid[1]} + cls")
    makers = {"train": train_step, "infer": infer_step}
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        fns = {stem: makers[mode](model, images, None) for stem, model in models.items()}
        rates = interleaved(fns, args.batch_size, args.repeats, args.warmup, args.iters)
        plain, hybrid = rates["patch"], rates[args.stem]
        print(f"  {mode:<6} plain {plain:8.2f} img/s   {args.stem} {hybrid:8.2f} img/s   "
              f"ratio hybrid/plain {hybrid / plain:5.2f}", flush=True)


if __name__ == "__main__":
    main()
