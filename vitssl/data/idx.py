"""IDX files, the format of MNIST and its family, and the installed ``builtin:`` (fashion-)mnist.

An IDX file is a 4-byte magic number (two zero bytes, a type code — 0x08 for
unsigned bytes — and the number of dimensions), one big-endian uint32 per
dimension, then the values in C order. A folder holds a split as
``PREFIX-images-idx3-ubyte`` (N x H x W) and ``PREFIX-labels-idx1-ubyte`` (N),
maybe gzipped and with ``.`` for the last ``-``; PREFIX is ``train`` or ``t10k``
(``test``). Magic, dimensions, size and counts are checked; a problem is one
:class:`~vitssl.errors.VitsslError` line naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vitssl.data.source import NONE, Augmentation
from vitssl.errors import VitsslError

PREFIXES = {"train": "train", "test": "t10k"}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # uint8, 3 dims / uint8, 1 dim
SYSTEM_DIR = Path("/usr/share/datasets")  # where Debian's dataset packages install


def split_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
    """(images file, labels file) of ``split`` in ``root``; None where there is none."""
    if split not in PREFIXES:
        raise VitsslError(f"idx:{root} has no split '{split}'; accepted: "
                          f"{', '.join(PREFIXES)}")
    prefix = PREFIXES[split]

    def find(kind: str, dims: int) -> Path | None:
        paths = (root / f"{prefix}-{kind}{sep}idx{dims}-ubyte{gz}" for sep in "-." for gz in
                 ("", ".gz"))
        return next((path for path in paths if path.is_file()), None)

    return find("images", 3), find("labels", 1)


@lru_cache(maxsize=8)
def _read_idx(path: str, stamp: tuple[int, int], magic: int) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
        data = gzip.decompress(data) if path.endswith(".gz") else data
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VitsslError(f"idx: {path} is not a complete gzip file ({detail})") from None
    except OSError as exc:
        raise VitsslError(f"idx: cannot read {path}: {exc.strerror or type(exc).__name__}") \
            from None
    ndim = magic & 0xFF
    what = "uint8 images, 3 dimensions" if magic == IMAGES_MAGIC else "uint8 labels, 1 dimension"
    if len(data) < 4:
        raise VitsslError(f"idx: {path} is truncated: {len(data)} bytes, not even a magic number")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise VitsslError(f"idx: {path} has magic number 0x{found:08x}, expected "
                          f"0x{magic:08x} ({what})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VitsslError(f"idx: {path} is truncated inside its header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    shape = " x ".join(map(str, dims))
    if len(data) - header != size:
        how = "is truncated" if len(data) - header < size else "has extra bytes"
        raise VitsslError(f"idx: {path} {how}: its header says {shape} = {size} bytes of data, "
                          f"it holds {len(data) - header}")
    if ndim == 3 and 0 in dims[1:]:
        raise VitsslError(f"idx: {path}: images of size {dims[1]} x {dims[2]}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The values of an IDX file, checked against ``magic`` (cached per unchanged file)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise VitsslError(f"idx: cannot read {path}: {exc.strerror or exc}") from None
    return _read_idx(str(path), (stat.st_size, stat.st_mtime_ns), magic)


def split_pair(root: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of ``split``; None when it has neither; an error for one alone."""
    images, labels = split_files(root, split)
    if images is None and labels is None:
        return None
    prefix = PREFIXES[split]
    for path, kind, dims in ((images, "images", 3), (labels, "labels", 1)):
        if path is None:
            raise VitsslError(f"idx:{root}: missing {prefix}-{kind}-idx{dims}-ubyte[.gz] "
                              f"(the {split} split's {kind})")
    return images, labels


def infer_num_classes(root: Path) -> int:
    """One more than the largest label in the folder's label files."""
    pairs = [pair for split in PREFIXES if (pair := split_pair(root, split)) is not None]
    return 1 + max((int(read_idx(labels, LABELS_MAGIC).max(initial=0)) for _, labels in pairs),
                   default=-1)


class IdxImages(Dataset):
    """Map-style dataset of (uint8 tensor (3, H, W), label) from a folder of IDX files.

    ``num_classes``: given, or one more than the largest label of the folder.
    """

    def __init__(self, root: str | Path, split: str = "train", *,
                 num_classes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise VitsslError(f"idx:{self.root}: no such directory")
        found = split_pair(self.root, split)
        if found is None:
            prefix = PREFIXES[split]
            raise VitsslError(f"idx:{self.root}: no {split} split: expected "
                              f"{prefix}-images-idx3-ubyte[.gz] and "
                              f"{prefix}-labels-idx1-ubyte[.gz] there")
        images_path, labels_path = found
        labels = read_idx(labels_path, LABELS_MAGIC)
        images = read_idx(images_path, IMAGES_MAGIC)
        if len(images) != len(labels):
            raise VitsslError(f"idx: {images_path} holds {len(images)} images but "
                              f"{labels_path} holds {len(labels)} labels")
        self.images, self.labels, self.split = images, labels, split
        classes = infer_num_classes(self.root) if num_classes is None else int(num_classes)
        top = int(labels.max(initial=0))
        if top >= classes:
            raise VitsslError(f"idx: {labels_path} has label {top}, outside 0..{classes - 1} "
                              f"(num_classes={classes})")
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index])).unsqueeze(0).expand(3, -1, -1)
        return image.contiguous(), int(self.labels[index])


class FashionMNIST(IdxImages):
    """Fashion-MNIST (Zalando, MIT): 10 clothing classes, grey 28×28, 60k/10k, installed IDX.

    Never downloaded: read from ``data.options.root`` (that folder or torchvision's
    ``ROOT/FashionMNIST/raw``) if given, else ``$VITSSL_DATA/fashion-mnist``, then
    ``/usr/share/datasets/fashion-mnist`` (:class:`MNIST` alike; docs/data.md).
    """

    num_classes = 10
    # Flip only, and colour in self-supervised views: benchmarks/RESULTS.md,
    # "Fashion-MNIST augmentation".
    augmentation = Augmentation(hflip=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                color=True)
    NAME, TORCHVISION, INSTALL = "fashion-mnist", "FashionMNIST", (
        "install it with 'apt-get install dataset-fashion-mnist', put the four IDX files in "
        "$VITSSL_DATA/fashion-mnist, or set data.options.root=ROOT to a folder holding them "
        "(or torchvision's ROOT/FashionMNIST/raw)")

    def __init__(self, split: str = "train", root: str | Path | None = None) -> None:
        if split not in PREFIXES:
            raise VitsslError(f"builtin:{self.NAME} has no split '{split}'; accepted: "
                              f"{', '.join(PREFIXES)}")
        super().__init__(self._folder(root), split, num_classes=10)

    def _folder(self, root: str | Path | None) -> Path:
        """The first folder holding the train images; one line saying where it looked if none."""
        if root is not None:
            root = Path(root).expanduser()
            candidates = [root, root / self.TORCHVISION / "raw"]
        else:
            candidates = [Path(os.environ["VITSSL_DATA"]).expanduser() / self.NAME] \
                if os.environ.get("VITSSL_DATA") else []
            candidates.append(SYSTEM_DIR / self.NAME)
        for folder in candidates:
            if folder.is_dir() and split_files(folder, "train")[0] is not None:
                return folder
        looked = ", ".join(str(c) for c in candidates)
        unset = "" if root is not None or os.environ.get("VITSSL_DATA") else " ($VITSSL_DATA unset)"
        raise VitsslError(f"builtin:{self.NAME}: no train-images-idx3-ubyte[.gz] in "
                          f"{looked}{unset}; {self.INSTALL}")


class MNIST(FashionMNIST):
    """MNIST handwritten digits: 10 classes, grey 28×28, 60k/10k, from installed IDX files."""

    # None, as for builtin:digits: a mirrored 2 reads as a 5, a cropped 8 as a 0.
    augmentation = NONE
    NAME, TORCHVISION, INSTALL = "mnist", "MNIST", (
        "put the four IDX files in $VITSSL_DATA/mnist, or set data.options.root=ROOT to a "
        "folder holding them (or torchvision's ROOT/MNIST/raw, written by "
        "torchvision.datasets.MNIST(ROOT, download=True) on a machine with internet)")
