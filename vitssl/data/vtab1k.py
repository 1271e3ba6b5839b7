"""``vtab1k:PATH/TASK[:split]``: the VTAB-1k folder layout of the PyTorch VTAB community.

A task folder holds ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and
``test.txt``; each line is ``images/<split>/000123.jpg <label>`` (a path
relative to the task folder, one space, a 0-based integer label; parsed with
``rsplit(maxsplit=1)``). The class count comes from the VTAB table below, keyed
by the task folder's name, never from the labels seen.

Split names: ``train800``, ``val200``, ``train800val200``, ``test``; ``train``
means ``train800val200`` (the final-training set of the protocol) and ``val``
means ``val200``.
"""

from __future__ import annotations

from pathlib import Path

from vitssl.data.decode import ImageFiles
from vitssl.errors import VitsslError

# The 19 VTAB-1k tasks (folder name -> number of classes), grouped as in VTAB.
VTAB_GROUPS = {
    "natural": {"caltech101": 102, "cifar": 100, "dtd": 47, "oxford_flowers102": 102,
                "oxford_iiit_pet": 37, "svhn": 10, "sun397": 397},
    "specialized": {"patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
                    "diabetic_retinopathy": 5},
    "structured": {"clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4,
                   "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18,
                   "smallnorb_ele": 9},
}
VTAB_CLASSES = {task: n for group in VTAB_GROUPS.values() for task, n in group.items()}
LIST_SPLITS = ("train800", "val200", "train800val200", "test")
SPLIT_ALIASES = {"train": "train800val200", "val": "val200"}


def parse_list(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """``(relative image path, label)`` per non-blank line; errors name the file and line."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise VitsslError(f"{path}:{number}: expected '<image path> <label>', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise VitsslError(f"{path}:{number}: label {parts[1]!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise VitsslError(f"{path}:{number}: label {label} outside 0..{num_classes - 1} "
                              f"({num_classes} classes)")
        out.append((parts[0], label))
    if not out:
        raise VitsslError(f"{path}: list file has no entries")
    return out


class Vtab1kTask(ImageFiles):
    """Map-style dataset of (RGB PIL image, label) for one split of one VTAB-1k task."""

    def __init__(self, path: str | Path, split: str = "train", *,
                 num_classes: int | None = None) -> None:
        self.root = Path(path).expanduser()
        self.task = self.root.name
        if not self.root.is_dir():
            raise VitsslError(f"vtab1k:{self.root}: no such task directory")
        if num_classes is None:
            if self.task not in VTAB_CLASSES:
                raise VitsslError(f"vtab1k:{self.root}: unknown task '{self.task}'; the folder "
                                  f"name must be one of {', '.join(VTAB_CLASSES)}")
            num_classes = VTAB_CLASSES[self.task]
        self.num_classes = int(num_classes)
        self.split = SPLIT_ALIASES.get(split, split)
        if self.split not in LIST_SPLITS:
            raise VitsslError(f"vtab1k has no split '{split}'; accepted: "
                              f"{', '.join(LIST_SPLITS)}, train (= train800val200), val (= val200)")
        list_file = self.root / f"{self.split}.txt"
        if not list_file.is_file():
            raise VitsslError(f"vtab1k:{self.root}: missing list file {list_file}")
        entries = parse_list(list_file, self.num_classes)
        self.samples: list[tuple[Path, int]] = []
        for number, (rel, label) in enumerate(entries, start=1):
            image = self.root / rel
            if not image.is_file():
                raise VitsslError(f"{list_file}:{number}: image {image} does not exist")
            self.samples.append((image, label))
