"""``builtin:fashion-mnist`` and ``builtin:mnist``: the IDX files, found where they are installed.

Nothing is downloaded. A dataset looks in ``data.options.root`` if given (that
folder, or torchvision's ``ROOT/FashionMNIST/raw``, ``ROOT/MNIST/raw``) and
nowhere else; otherwise in ``$VITSSL_DATA/fashion-mnist`` (``.../mnist``), then
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT licence): 60,000 + 10,000
grey 28×28 photographs of clothing, 10 classes. MNIST (LeCun et al.): 60,000 +
10,000 handwritten digits. Splits ``train`` / ``test`` (see :mod:`vitssl.data.idx`).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitssl.data.augment import NONE, Augmentation
from vitssl.data.idx import PREFIXES, IdxImages, split_files
from vitssl.errors import VitsslError

SYSTEM_DIR = Path("/usr/share/datasets")


class FashionMNIST(IdxImages):
    """Fashion-MNIST (Zalando, MIT): 10 clothing classes, grey 28×28, 60k/10k, installed IDX."""

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
