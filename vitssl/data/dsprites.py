"""Procedural dSprites, rendered on demand (no download), and VTAB's two dSprites tasks.

Latent grid (every combination once, 3 × 6 × 40 × 32 × 32 = 737,280 images):
shape ∈ (square, ellipse, heart); scale = linspace(0.5, 1, 6); orientation =
linspace(0, 2π, 40) (2π included, as in dSprites); posX, posY = linspace(0, 1, 32).
Image ``i`` has the latent indices ``np.unravel_index(i, (3, 6, 40, 32, 32))``
(posY varies fastest, the order of the original file).

Rendering (our own; the original pixels are not reproduced): 64×64 binary, one
white sprite on black, 3 channels of 0/255. The sprite's centre is at pixel
coordinates (12 + 40·posX, 12 + 40·posY) (x right, y down, pixel centres at
+0.5), its radius 12·scale px, rotated counter-clockwise on screen by the
orientation; a pixel is white when its centre falls inside the shape. Square:
side 1.4·radius; ellipse: axes radius × radius/2 (long axis along x at
orientation 0); heart: the curve (x²+y²−1)³ = x²y³ fitted into the radius.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from vitssl.data.source import Augmentation
from vitssl.data.vtab1k import LIST_SPLITS, SPLIT_ALIASES
from vitssl.errors import VitsslError

SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
GRID = (len(SHAPES), len(SCALES), len(ORIENTATIONS), len(POSITIONS), len(POSITIONS))
NUM_IMAGES = int(np.prod(GRID))  # 737,280
SIZE = 64
RADIUS = 12.0  # sprite radius in pixels at scale 1
MARGIN = 12.0  # centre range [MARGIN, SIZE - MARGIN]

# Fixed VTAB-like splits of a seed-0 permutation of all images.
TRAIN, VAL = 800, 200
DEFAULT_TEST_SIZE = 2_000

# Heart curve (x²+y²−1)³ − x²y³ ≤ 0 spans x ∈ ±1.138, y ∈ [−1, 1.236]; shift and
# shrink it so it fits the unit disc around its box centre.
_HEART_SCALE, _HEART_SHIFT = 1.337, 0.118


def latent_indices(index: int) -> tuple[int, int, int, int, int]:
    """(shape, scale, orientation, posX, posY) indices of image ``index``."""
    if not 0 <= index < NUM_IMAGES:
        raise IndexError(f"dSprites index {index} outside 0..{NUM_IMAGES - 1}")
    return tuple(int(i) for i in np.unravel_index(index, GRID))  # type: ignore[return-value]


def latent_values(index: int) -> dict[str, float | str]:
    s, k, o, x, y = latent_indices(index)
    return {"shape": SHAPES[s], "scale": float(SCALES[k]), "orientation": float(ORIENTATIONS[o]),
            "posX": float(POSITIONS[x]), "posY": float(POSITIONS[y])}


def render(index: int) -> np.ndarray:
    """The (64, 64) uint8 image of ``index``: 255 inside the sprite, 0 elsewhere."""
    s, k, o, x, y = latent_indices(index)
    centres = np.arange(SIZE, dtype=np.float64) + 0.5
    px, py = np.meshgrid(centres, centres)  # (col x, row y), each (64, 64)
    radius = RADIUS * SCALES[k]
    dx = px - (MARGIN + (SIZE - 2 * MARGIN) * POSITIONS[x])
    dy = -(py - (MARGIN + (SIZE - 2 * MARGIN) * POSITIONS[y]))  # y up, so rotation is CCW
    theta = ORIENTATIONS[o]
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) / radius  # rotate the pixel by -theta into the sprite frame
    v = (-sin * dx + cos * dy) / radius
    if SHAPES[s] == "square":
        inside = np.maximum(np.abs(u), np.abs(v)) <= 0.7
    elif SHAPES[s] == "ellipse":
        inside = u**2 + (v / 0.5) ** 2 <= 1.0
    else:
        hx, hy = _HEART_SCALE * u, _HEART_SCALE * v + _HEART_SHIFT
        inside = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    return inside.astype(np.uint8) * 255


def loc_label(index: int) -> int:
    """VTAB dsprites_loc: posX index // 2 (16 classes)."""
    return latent_indices(index)[3] // 2


def ori_label(index: int) -> int:
    """VTAB dsprites_ori: floor(orientation index / 2.5) (16 classes)."""
    return (2 * latent_indices(index)[2]) // 5


@lru_cache(maxsize=1)
def _permutation() -> np.ndarray:
    return np.random.default_rng(0).permutation(NUM_IMAGES)


def split_indices(split: str, test_size: int = DEFAULT_TEST_SIZE) -> np.ndarray:
    """Image indices of a split: slices of one fixed seed-0 permutation, never overlapping."""
    name = SPLIT_ALIASES.get(split, split)
    if not 0 < test_size <= NUM_IMAGES - TRAIN - VAL:
        raise VitsslError(f"dSprites test_size must be in 1..{NUM_IMAGES - TRAIN - VAL}, "
                          f"got {test_size}")
    perm = _permutation()
    slices = {"train800": slice(0, TRAIN), "val200": slice(TRAIN, TRAIN + VAL),
              "train800val200": slice(0, TRAIN + VAL),
              "test": slice(TRAIN + VAL, TRAIN + VAL + test_size)}
    if name not in slices:
        raise VitsslError(f"dSprites has no split '{split}'; accepted: {', '.join(LIST_SPLITS)}, "
                          f"train (= train800val200), val (= val200)")
    return perm[slices[name]]


class _DSpritesTask(Dataset):
    """A VTAB dSprites task (Matthey et al. 2017, Apache-2.0), rendered here.

    Splits: :func:`split_indices` (``test_size=`` up to 736,280; default 2,000).
    """

    num_classes = 16

    def __init__(self, split: str = "train", test_size: int = DEFAULT_TEST_SIZE) -> None:
        self.indices = split_indices(split, test_size)
        self.split = SPLIT_ALIASES.get(split, split)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[item])
        image = torch.from_numpy(render(index)).unsqueeze(0).expand(3, -1, -1).contiguous()
        return image, self.label_fn(index)


class DSpritesLoc(_DSpritesTask):
    """dSprites x-position (VTAB dsprites_loc): 16 classes, 64×64, 800/200/2,000; Apache-2.0."""

    label_fn = staticmethod(loc_label)
    # The label is the x position: any crop or flip moves it.
    augmentation = Augmentation(augment=False, hflip=False)


class DSpritesOri(_DSpritesTask):
    """dSprites orientation (VTAB dsprites_ori): 16 classes, 64×64, 800/200/2,000; Apache-2.0."""

    label_fn = staticmethod(ori_label)
    # The label is the orientation: no flip; square crops move and scale, never turn or skew.
    augmentation = Augmentation(hflip=False, crop_scale=(0.5, 1.0), crop_ratio=(1.0, 1.0))
