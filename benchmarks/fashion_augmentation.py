"""Which augmentation Fashion-MNIST's labels survive: short supervised runs, one per recipe.

Each recipe trains ``vitssl pretrain --objective supervised --data
builtin:fashion-mnist --image-size 28 --steps 300 --batch-size 32`` with the
recipe's ``--set data.*`` values (every other setting at its default), then
scores the trained classifier's top-1 on the 10,000 test images. One JSON line
per (recipe, seed). Needs the files (``apt-get install dataset-fashion-mnist``).

    python benchmarks/fashion_augmentation.py --recipes none,hflip --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitssl.config import load_config
from vitssl.data.tasks import load_task
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.train.checkpoint import latest_checkpoint
from vitssl.train.run import pretrain

RATIO = "data.crop_ratio=[0.75,1.3333333333333333]"  # the ImageNet recipe's aspect range
RECIPES = {
    "none": ["data.augment=false", "data.hflip=false"],
    "hflip": ["data.augment=true", "data.hflip=true", "data.crop_scale=[1.0,1.0]",
              "data.crop_ratio=[1.0,1.0]"],
    "crop0.6": ["data.augment=true", "data.hflip=false", "data.crop_scale=[0.6,1.0]", RATIO],
    "crop0.6+hflip": ["data.augment=true", "data.hflip=true", "data.crop_scale=[0.6,1.0]",
                      RATIO],
    "imagenet": ["data.augment=true", "data.hflip=true", "data.crop_scale=[0.35,1.0]", RATIO],
}


def test_top1(run_dir: Path, cfg, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (%) of the run's last checkpoint on the given test images."""
    factory = get_registry().get("objectives", "supervised")
    model = factory(encoder=build_encoder(cfg.model), num_classes=10)
    model.load_state_dict(load_file(str(latest_checkpoint(run_dir) / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model.logits(images[i:i + 500]).argmax(1)
                          for i in range(0, len(images), 500)])
    return float((pred == labels).float().mean()) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    task = load_task("builtin:fashion-mnist", 28)
    images = torch.stack([task.test[i][0] for i in range(len(task.test))])
    labels = torch.tensor([task.test[i][1] for i in range(len(task.test))])
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.recipes.split(","):
            out = Path(tempfile.mkdtemp(prefix=f"fashion-{name}-"))
            cfg = load_config(None, [
                "objective.name=supervised", "data.spec=builtin:fashion-mnist",
                "model.image_size=28", f"train.steps={args.steps}", "train.batch_size=32",
                f"train.seed={seed}", "summary_eval.enabled=false", f"out={out}",
                *RECIPES[name]])
            start = time.perf_counter()
            pretrain(cfg)
            took = time.perf_counter() - start
            print(json.dumps({"recipe": name, "seed": seed,
                              "test_top1": round(test_top1(out, cfg, images, labels), 2),
                              "train_s": round(took, 1)}), flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
