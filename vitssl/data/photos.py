"""``builtin:photos``: unlabelled random crops of the photographs bundled with scikit-image.

The files are read straight from the installed ``skimage/data`` directory,
where the scikit-image wheel ships them (never through ``skimage.data``'s
pooch fetcher, so nothing is downloaded). Licences, as stated by scikit-image:
astronaut and hubble_deep_field (NASA) and rocket (SpaceX) — public
domain; camera, chelsea, coffee, retina — CC0 (photographers Lav Varshney,
Stefan van der Walt, Rachel Michetti; Häggström); brick, grass, gravel — CC0
textures; coins, immunohistochemistry — no known copyright restrictions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitssl.data.source import IMAGENET_STYLE
from vitssl.errors import VitsslError

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
          "hubble_deep_field.jpg", "retina.jpg", "brick.png", "grass.png", "gravel.png",
          "coins.png", "ihc.png")
SPLIT_SEEDS = {"train": 0, "test": 1}


def photo_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    root = photo_dir()
    missing = [name for name in PHOTOS if not (root / name).is_file()]
    if missing:
        raise VitsslError(f"builtin:photos: scikit-image's bundled photographs are missing from "
                          f"{root} ({', '.join(missing)}); reinstall scikit-image")
    out = []
    for name in PHOTOS:
        with Image.open(root / name) as image:
            out.append(image.convert("RGB"))
    return tuple(out)


class Photos(Dataset):
    """Unlabelled crops of 12 photos bundled in scikit-image (public domain/CC0); 96 px, 20k.

    Item ``i`` of a split is a square crop (side 25-100% of the photo's short
    side, photo chosen uniformly) resized to ``size`` px, a pure function of
    (split, i); ``length`` items per split; ``train`` and ``test`` draw from
    different seeds.
    """

    num_classes = None
    augmentation = IMAGENET_STYLE  # unlabelled photographs: the full recipe

    def __init__(self, split: str = "train", size: int = 96, length: int = 20_000) -> None:
        if split not in SPLIT_SEEDS:
            raise VitsslError(f"builtin:photos has no split '{split}'; accepted: train, test")
        if size < 8 or length < 1:
            raise VitsslError(f"builtin:photos needs size >= 8 and length >= 1, "
                              f"got size={size}, length={length}")
        self.split, self.size, self.length = split, int(size), int(length)
        self.seed = SPLIT_SEEDS[split]

    def __len__(self) -> int:
        return self.length

    def crop_box(self, index: int) -> tuple[int, tuple[int, int, int, int]]:
        """(photo number, (left, top, right, bottom)) of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"builtin:photos index {index} outside 0..{self.length - 1}")
        rng = np.random.default_rng([self.seed, index])
        photo = int(rng.integers(len(PHOTOS)))
        width, height = _photos()[photo].size
        side = int(round(min(width, height) * rng.uniform(0.25, 1.0)))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        return photo, (left, top, left + side, top + side)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        photo, box = self.crop_box(index)
        crop = _photos()[photo].crop(box)
        return crop.resize((self.size, self.size), Image.Resampling.BILINEAR), -1
