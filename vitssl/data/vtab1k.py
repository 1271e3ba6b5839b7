"""``vtab1k:PATH/TASK[:classes=N][:split]``: the VTAB-1k layout of the PyTorch VTAB community.

A task folder holds ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and
``test.txt``; each line is ``images/<split>/000123.jpg <label>`` (a path
relative to the task folder, a space, a 0-based label). Class counts: the
table below, else ``:classes=N`` (or ``num_classes``), else inferred. Splits:
the four lists; ``train`` means ``train800val200``, ``val`` ``val200``.
"""

from __future__ import annotations

import sys
from functools import cache
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


def parse_list(path: Path, num_classes: int | None) -> list[tuple[str, int]]:
    """``(relative image path, label)`` per non-blank line; errors name the file and line.

    With ``num_classes`` None, labels need only be non-negative.
    """
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
        if label < 0 and num_classes is None:
            raise VitsslError(f"{path}:{number}: label {label} is negative")
        if num_classes is not None and not 0 <= label < num_classes:
            raise VitsslError(f"{path}:{number}: label {label} outside 0..{num_classes - 1} "
                              f"({num_classes} classes)")
        out.append((parts[0], label))
    if not out:
        raise VitsslError(f"{path}: list file has no entries")
    return out


def split_target(target: str) -> tuple[str, int | None]:
    """``"PATH:classes=N"`` -> (PATH, N); a target without the suffix -> (target, None)."""
    head, colon, tail = str(target).rpartition(":")
    if not colon or not tail.startswith("classes="):
        return str(target), None
    value = tail.removeprefix("classes=")
    if not value.isdigit() or int(value) < 1:
        raise VitsslError(f"vtab1k:{target}: classes= needs a positive integer, got '{value}'")
    return head, int(value)


@cache
def _announce(resolved: Path, name: str, num_classes: int, how: str) -> None:
    """Say once per process (and task folder) how a custom task's class count was found."""
    print(f"vtab1k: {name} is not a VTAB task: {num_classes} classes {how}",
          file=sys.stderr, flush=True)


def infer_num_classes(root: Path) -> int:
    """One more than the largest label in the task's four list files."""
    labels = []
    for split in LIST_SPLITS:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise VitsslError(f"vtab1k:{root}: missing list file {list_file} (needed to infer "
                              f"the class count; or give vtab1k:PATH:classes=N)")
        labels += [label for _, label in parse_list(list_file, None)]
    return max(labels) + 1


def task_num_classes(root: Path, given: int | None = None) -> int:
    """The class count of the task folder ``root``: VTAB table, ``given``, or inferred."""
    fixed = VTAB_CLASSES.get(root.name)
    if fixed is not None:
        if given is not None and int(given) != fixed:
            raise VitsslError(f"vtab1k:{root}: {root.name} is a VTAB task with {fixed} classes; "
                              f"got classes={given}")
        return fixed
    how = "(given)" if given is not None else ("inferred from the labels of its four lists "
                                               "(set vtab1k:PATH:classes=N to give the count)")
    count = int(given) if given is not None else infer_num_classes(root)
    _announce(root.resolve(), root.name, count, how)
    return count


class Vtab1kTask(ImageFiles):
    """Map-style dataset of (RGB PIL image, label) for one split of one VTAB-1k task."""

    def __init__(self, path: str | Path, split: str = "train", *,
                 num_classes: int | None = None) -> None:
        target, given = split_target(str(path))
        if given is not None and num_classes is not None and int(num_classes) != given:
            raise VitsslError(f"vtab1k:{path}: classes={given} disagrees with "
                              f"num_classes={num_classes}")
        self.root = Path(target).expanduser()
        if not self.root.is_dir():
            raise VitsslError(f"vtab1k:{self.root}: no such task directory")
        self.num_classes = task_num_classes(self.root, num_classes if given is None else given)
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
