"""``folder:PATH``: class-per-subfolder image trees and flat unlabelled folders.

- ``PATH/<class>/.../*.jpg``: labelled; classes are the sorted sub-folder names
  (label = position in that order, as torchvision's ``ImageFolder``); images are
  found recursively inside each class folder.
- ``PATH/*.jpg`` with no sub-folders holding images: unlabelled (label -1).

Splits: ``train`` is PATH itself unless PATH holds a ``train`` sub-folder; any
other split ``S`` reads ``PATH/S``. Image suffixes: see
:data:`vitssl.data.decode.IMAGE_EXTS` (case-insensitive); hidden files are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vitssl.data.bands import band_axis
from vitssl.data.decode import IMAGE_EXTS, ImageFiles, is_image_file
from vitssl.errors import VitsslError


def _images(root: Path) -> Iterator[Path]:
    """Image files under ``root``, unsorted; hidden files and folders left out."""
    return (p for p in root.rglob("*") if is_image_file(p) and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _split_root(path: Path, split: str) -> Path:
    if not path.exists():
        raise VitsslError(f"folder:{path}: no such directory")
    if not path.is_dir():
        raise VitsslError(f"folder:{path}: not a directory")
    if (path / split).is_dir():
        return path / split
    if split == "train":
        return path
    raise VitsslError(f"folder:{path} has no split '{split}': expected a directory {path / split}")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_info(path: str | Path, split: str = "train") -> tuple[bool, int | None]:
    """(labelled, class count) of a tree without listing every image (as :class:`ImageFolder`).

    Labelled when a class folder holds an image (found by the first match);
    problems the full listing finds are reported when the folder is opened.
    """
    root = _split_root(Path(path).expanduser(), split)
    subdirs = _class_dirs(root)
    labelled = any(next(_images(d), None) for d in subdirs)
    return (True, len(subdirs)) if labelled else (False, None)


class ImageFolder(ImageFiles):
    """Map-style dataset of (RGB PIL image or bands, label) over an image tree."""

    def __init__(self, path: str | Path, split: str = "train", layout: str = "auto") -> None:
        band_axis((1, 2, 2), "", layout)  # refuses an unknown layout now
        self.layout = layout
        self.root = _split_root(Path(path).expanduser(), split)
        subdirs = _class_dirs(self.root)
        top = sorted(p for p in self.root.iterdir() if p.is_file() and is_image_file(p))
        per_class = {d.name: sorted(_images(d)) for d in subdirs}
        if any(per_class.values()):
            if top:
                raise VitsslError(f"folder:{self.root} mixes images ({top[0].name}) with class "
                                  f"folders; put every image inside a class folder, or use a "
                                  f"flat folder for unlabelled data")
            empty = [name for name, files in per_class.items() if not files]
            if empty:
                raise VitsslError(f"folder:{self.root}: class folder '{empty[0]}' has no images "
                                  f"({', '.join(IMAGE_EXTS)})")
            self.classes = list(per_class)
            self.samples = [(p, label) for label, name in enumerate(self.classes)
                            for p in per_class[name]]
            self.num_classes: int | None = len(self.classes)
        elif top:
            self.classes = []
            self.samples = [(p, -1) for p in top]
            self.num_classes = None
        else:
            raise VitsslError(f"folder:{self.root} holds no images ({', '.join(IMAGE_EXTS)}), "
                              f"neither directly nor in class sub-folders")
