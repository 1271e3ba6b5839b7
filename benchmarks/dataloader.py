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

``--pipeline`` instead measures the default run's pipeline (``pretrain_batches``
with the source's default augmentation, batch 64) against the default run's
training step (a step of ``--objective`` on Ti/4 cut to 4 blocks, via
``loop_step.py``), on a ``folder:`` tree of ``--pngs`` grey ~300 px PNGs cut from
the bundled photographs (at 32 px) and on ``builtin:digits`` and
``builtin:fashion-mnist`` (at 28 px), and on data beyond 8-bit RGB at 32 px: as many
16-bit grey PNGs (one channel) and 6-band 16-bit TIFFs of 128 px (six channels, their
fed loop a step on six channels), for each ``--workers`` setting (counts or ``auto``);
``--cases`` picks some (folder, digits, fashion-mnist, png16, tiff6). Per case and
setting: the pipeline alone (batches/s, images/s, steady), the step alone on a batch
in memory, their ratio, and the two together (the loop fed by the pipeline). Median of
``--repeats`` interleaved rounds; every rate of a round is measured in the same process,
side by side.
OpenMP's wait policy is the caller's (the default run's: unset, threads spin a
while between parallel regions, which on few cores starves workers; set
``OMP_WAIT_POLICY=PASSIVE`` to compare).

    python benchmarks/dataloader.py --pipeline [--workers 0,1,auto] [--repeats 3] [--cases ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitssl.config import DataConfig
from vitssl.data.photos import PHOTOS, photo_dir
from vitssl.data.pipeline import (
    local_ranks,
    pretrain_batches,
    resolve_num_workers,
    usable_cores,
)
from vitssl.data.shard import write_shards
from vitssl.data.source import parse_spec
from vitssl.data.transforms import normalize, pretrain_transform

IMAGE_SIZE = 224


def photo_crops(count: int, mode: str) -> Iterator[tuple[int, Image.Image, np.random.Generator]]:
    """``count`` seeded random square crops of the bundled photographs in ``mode``, each
    with its index and the generator (for further draws in the same sequence)."""
    rng = np.random.default_rng(0)
    sources = []
    for name in PHOTOS:
        with Image.open(photo_dir() / name) as image:
            sources.append(image.convert(mode))
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        yield i, photo.crop((left, top, left + side, top + side)), rng


def save_in_class(root: Path, i: int, classes: int, image: Image.Image, suffix: str,
                  **options: Any) -> None:
    """Image ``i`` as ``root/class{i % classes}/{i:05d}{suffix}``."""
    path = root / f"class{i % classes}" / f"{i:05d}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def make_images(root: Path, count: int, classes: int = 4) -> None:
    """``count`` JPEGs of about 500×375 px, cut from the bundled photographs."""
    for i, crop, _ in photo_crops(count, "RGB"):
        save_in_class(root, i, classes, crop.resize((500, 375)), ".jpg", quality=90)


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


# -- --pipeline: the default run's pipeline against its training step ----------------------

PIPELINE_BATCH = 64
CASES = ("folder", "digits", "fashion-mnist", "png16", "tiff6")  # --pipeline --cases names


def make_grey_pngs(root: Path, count: int, classes: int = 4) -> None:
    """``count`` grey PNGs of 260-340 px a side, cut from the bundled photographs."""
    for i, crop, rng in photo_crops(count, "L"):
        out = int(rng.integers(260, 341))
        save_in_class(root, i, classes, crop.resize((out, out)), ".png")


def make_deep_images(root: Path, count: int, classes: int = 4) -> None:
    """``count`` 16-bit grey PNGs (``png16/``, the grey crops with random low bytes) and as
    many 6-band 16-bit TIFFs of 128 px (``tiff6/``: the crop's grey and five noise bands)."""
    import tifffile

    for i, crop, rng in photo_crops(count, "L"):
        out = int(rng.integers(260, 341))
        grey = np.asarray(crop.resize((out, out)), dtype=np.uint16)
        deep = grey * 256 + rng.integers(0, 256, grey.shape, dtype=np.uint16)
        save_in_class(root / "png16", i, classes, Image.fromarray(deep), ".png")
        small = np.asarray(crop.resize((128, 128)), dtype=np.uint16)[..., None] * 257
        bands = np.concatenate([small, rng.integers(0, 65536, (128, 128, 5), np.uint16)], -1)
        folder = root / "tiff6" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"{i:06d}.tif", bands, photometric="minisblack",
                         planarconfig="contig")


def _stats(spec: str) -> dict[str, tuple[float, ...]]:
    """Fixed statistics, one per channel, for the deep cases (none for RGB pictures)."""
    count = {"png16": 1, "tiff6": 6}.get(Path(spec).name, 3)
    return {} if count == 3 else {"mean": (0.5,) * count, "std": (0.25,) * count}


def _data(spec: str, workers: int | str) -> DataConfig:
    """The default run's data settings for ``spec``."""
    return DataConfig(spec=spec, num_workers=workers, **_stats(spec))


def time_pipeline(spec: str, workers: int | str, size: int, batches: int) -> tuple[float, float]:
    """(steady, end-to-end) images/s of ``batches`` batches of the default run's pipeline."""
    start = time.perf_counter()
    data = pretrain_batches(_data(spec, workers), image_size=size,
                            batch_size=PIPELINE_BATCH, seed=0, num_steps=batches)
    arrivals = [time.perf_counter() for _ in data]
    total, steady = _rates(start, arrivals, PIPELINE_BATCH)
    return steady, total


def time_step(step, steps: int) -> float:
    """Images/s of the training step on a batch in memory (median step time)."""
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return PIPELINE_BATCH / statistics.median(times)


def time_loop(run, spec: str, workers: int | str, size: int, steps: int) -> float:
    """Images/s of the training step fed by the pipeline (after one step of warm-up)."""
    from vitssl.train.run import run_steps

    data = pretrain_batches(_data(spec, workers), image_size=size,
                            batch_size=PIPELINE_BATCH, seed=0, num_steps=steps + 1)
    fixed, run.data = run.data, iter(data)
    try:
        taken = run_steps(run, 0, steps + 1)
        next(taken)
        t0 = time.perf_counter()
        for _ in taken:
            pass
        return steps * PIPELINE_BATCH / (time.perf_counter() - t0)
    finally:
        run.data = fixed  # the step alone goes back to its batch in memory


def pipeline_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from loop_step import loop_step

    settings = [w if w == "auto" else int(w) for w in args.workers.split(",")]
    cores, ranks = usable_cores(), local_ranks()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cores} usable "
          f"cores, load average {load:.1f}, OMP_WAIT_POLICY {omp}; objective {args.objective} "
          f"on Ti/4 (4 blocks), batch {PIPELINE_BATCH}; median of {args.repeats} interleaved "
          f"rounds")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "grey"
        cases = [(f"folder:{root}", f"folder ({args.pngs} grey PNGs ~300 px)", 32),
                 ("builtin:digits", "builtin:digits", 28),
                 ("builtin:fashion-mnist", "builtin:fashion-mnist", 28),
                 (f"folder:{root}-deep/png16", f"folder ({args.pngs} 16-bit grey PNGs ~300 px)",
                  32),
                 (f"folder:{root}-deep/tiff6", f"folder ({args.pngs} 6-band 16-bit TIFFs 128 px)",
                  32)]
        chosen = args.cases.split(",") if args.cases else None
        cases = [c for i, c in enumerate(cases) if chosen is None or CASES[i] in chosen]
        if any(c[0] == f"folder:{root}" for c in cases):
            make_grey_pngs(root, args.pngs)
        if any("-deep" in c[0] for c in cases):
            make_deep_images(Path(f"{root}-deep"), args.pngs)
        # The default run's step (3 channels) at each size; the loop row feeds each data's own.
        steps = {size: loop_step(args.objective, [f"model.image_size={size}"],
                                 PIPELINE_BATCH) for size in {c[2] for c in cases}}
        loops = {spec: steps[size][1] if "-deep" not in spec else loop_step(
            args.objective, [f"model.image_size={size}", f"data.spec={spec}",
                             *(f"data.{k}={list(v)}" for k, v in _stats(spec).items())],
            PIPELINE_BATCH)[1] for spec, _name, size in cases}
        rows: dict[tuple[str, str], list[tuple[float, ...]]] = {}
        for _ in range(args.repeats):
            for spec, _name, size in cases:
                step, _ = steps[size]
                for w in settings:
                    step_rate = time_step(step, args.step_repeats)
                    steady, total = time_pipeline(spec, w, size, args.batches)
                    loop = time_loop(loops[spec], spec, w, size, args.loop_steps)
                    rows.setdefault((spec, str(w)), []).append((steady, total, step_rate, loop))
        print("| data | px | workers | pipeline batches/s | pipeline img/s (steady / end-to-end) "
              "| step img/s | pipeline / step | loop img/s (data + step) |")
        print("|---|---|---|---|---|---|---|---|")
        for spec, name, size in cases:
            in_memory = parse_spec(spec).source.in_memory
            for w in settings:
                runs = rows[(spec, str(w))]
                steady, total, step_rate, loop = (statistics.median(r[i] for r in runs)
                                                  for i in range(4))
                ratio = statistics.median(r[0] / r[2] for r in runs)
                auto = resolve_num_workers("auto", in_memory=in_memory, cores=cores, ranks=ranks)
                shown = f"auto = {auto}" if w == "auto" else str(w)
                print(f"| {name} | {size} | {shown} | {steady / PIPELINE_BATCH:.1f} | "
                      f"{steady:.0f} / {total:.0f} | {step_rate:.0f} | {ratio:.2f} | "
                      f"{loop:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default=None,
                        help="comma-separated counts (default 0,1,2; with --pipeline 0,1,auto)")
    parser.add_argument("--model-step", action="store_true")
    parser.add_argument("--pipeline", action="store_true",
                        help="the default run's pipeline against its training step")
    parser.add_argument("--objective", default="masked-patch")
    parser.add_argument("--pngs", type=int, default=2624)
    parser.add_argument("--cases", default=None,
                        help=f"--pipeline cases to run, comma-separated: {', '.join(CASES)}")
    parser.add_argument("--batches", type=int, default=20, help="pipeline batches per timing")
    parser.add_argument("--loop-steps", type=int, default=20)
    parser.add_argument("--step-repeats", type=int, default=5)
    args = parser.parse_args()
    if args.pipeline:
        args.workers = args.workers or "0,1,auto"
        pipeline_main(args)
        return
    workers = [int(w) for w in (args.workers or "0,1,2").split(",")]
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
