"""Images/s of the ``wds:`` pretraining pipeline vs a torchvision ImageFolder DataLoader.

Both decode the same JPEGs (crops of scikit-image's bundled photographs, about
ImageNet's typical size) and apply the same augmentation at 224 px (random
resized crop + flip + normalise), with 0, 1 and 2 DataLoader workers. Each
measurement reads ``--images`` images in batches of ``--batch-size`` and
reports two rates: end-to-end (building the loader, worker start-up and
shutdown included) and steady (from the first batch's arrival to the last's,
what a long run sees). Each is the median of ``--repeats`` runs.
``--model-step`` also times one forward+backward step of a ViT-Ti/16 at 224 px
on the same batch size, to compare with the loader.

    python benchmarks/dataloader.py [--images 256] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitssl.config import DataConfig
from vitssl.data.photos import PHOTOS, photo_dir
from vitssl.data.pipeline import pretrain_batches
from vitssl.data.shard import write_shards
from vitssl.data.transforms import normalize, pretrain_transform

IMAGE_SIZE = 224


def make_images(root: Path, count: int, classes: int = 4) -> None:
    """``count`` JPEGs of about 500×375 px, cut from the bundled photographs."""
    rng = np.random.default_rng(0)
    sources = []
    for name in PHOTOS:
        with Image.open(photo_dir() / name) as image:
            sources.append(image.convert("RGB"))
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((500, 375))
        path = root / f"class{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)


def _rates(start: float, arrivals: list[float], batch: int) -> tuple[float, float]:
    """(end-to-end, steady) images/s."""
    total = len(arrivals) * batch / (time.perf_counter() - start)
    steady = (len(arrivals) - 1) * batch / (arrivals[-1] - arrivals[0])
    return total, steady


def time_wds(spec: str, workers: int, images: int, batch: int) -> tuple[float, float]:
    cfg = DataConfig(spec=spec, num_workers=workers, shuffle_buffer=256)
    start = time.perf_counter()
    batches = pretrain_batches(cfg, image_size=IMAGE_SIZE, batch_size=batch, seed=0,
                               num_steps=images // batch)
    arrivals = [time.perf_counter() for _ in batches]
    return _rates(start, arrivals, batch)


class _Normalised:
    def __init__(self, transform, mean, std) -> None:
        self.transform, self.mean, self.std = transform, mean, std

    def __call__(self, image):
        return normalize(self.transform(image), self.mean, self.std)


def time_image_folder(root: Path, workers: int, images: int, batch: int) -> tuple[float, float]:
    from torchvision.datasets import ImageFolder

    cfg = DataConfig()
    transform = _Normalised(pretrain_transform(IMAGE_SIZE, cfg.crop_scale, cfg.hflip),
                            cfg.mean, cfg.std)
    start = time.perf_counter()
    dataset = ImageFolder(str(root), transform=transform)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True)
    arrivals = []
    for _ in loader:
        arrivals.append(time.perf_counter())
        if len(arrivals) * batch >= images:
            break
    return _rates(start, arrivals, batch)


def time_model_step(batch: int, repeats: int) -> float:
    from vitssl.models.build import build_encoder

    model = build_encoder(name="Ti/16", image_size=IMAGE_SIZE)
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.forward_features(images).mean().backward()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--model-step", action="store_true")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} JPEGs "
          f"500x375 -> {IMAGE_SIZE} px, batch {args.batch_size}, median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_images(root, args.images)
        shards = write_shards(f"folder:{root}", str(Path(tmp) / "shards" / "s-%04d.tar"),
                              maxcount=64)
        spec = f"wds:{Path(tmp)}/shards/s-{{0000..{len(shards) - 1:04d}}}.tar"
        print("images/s (end-to-end | steady); ratio = wds / ImageFolder")
        print(f"{'workers':>7} {'wds':>15} {'ImageFolder':>15} {'ratio':>13}")
        for w in workers:
            runs = [(time_wds(spec, w, args.images, args.batch_size),
                     time_image_folder(root, w, args.images, args.batch_size))
                    for _ in range(args.repeats)]  # interleaved: load drifts alike
            wds = [statistics.median(r[0][i] for r in runs) for i in (0, 1)]
            folder = [statistics.median(r[1][i] for r in runs) for i in (0, 1)]
            print(f"{w:>7} {wds[0]:>7.1f} | {wds[1]:<5.1f} {folder[0]:>7.1f} | {folder[1]:<5.1f} "
                  f"{wds[0] / folder[0]:>5.2f} | {wds[1] / folder[1]:.2f}", flush=True)
    if args.model_step:
        rate = time_model_step(args.batch_size, args.repeats)
        print(f"ViT-Ti/16 forward+backward at {IMAGE_SIZE} px, batch {args.batch_size}: "
              f"{rate:.1f} img/s")


if __name__ == "__main__":
    main()
