"""``folder:`` trees and ``vtab1k:`` task folders: parsing, labels, splits and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitssl.data.source import open_dataset
from vitssl.data.tasks import load_task
from vitssl.errors import VitsslError


def _image(path: Path, seed: int, size=(20, 14)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_class_per_subfolder_tree(tmp_path):
    expected = {}
    for label, name in enumerate(["ant", "bee", "cat"]):
        for i in range(2 + label):
            rel = f"{name}/sub/{i}.png" if i == 0 else f"{name}/{i}.png"
            expected[rel] = (_image(tmp_path / rel, 10 * label + i), label)
    dataset = open_dataset(f"folder:{tmp_path}")
    assert dataset.num_classes == 3 and dataset.classes == ["ant", "bee", "cat"]
    assert len(dataset) == 2 + 3 + 4
    seen = {}
    for index in range(len(dataset)):
        image, label = dataset[index]
        rel = dataset.samples[index][0].relative_to(tmp_path).as_posix()
        seen[rel] = (np.asarray(image), label)
    assert seen.keys() == expected.keys()
    for rel, (pixels, label) in expected.items():
        assert np.array_equal(seen[rel][0], pixels) and seen[rel][1] == label


def test_flat_folder_is_unlabelled_and_split_folders(tmp_path):
    for i in range(3):
        _image(tmp_path / "flat" / f"{i}.jpg", i)
    flat = open_dataset(f"folder:{tmp_path / 'flat'}")
    assert flat.num_classes is None and len(flat) == 3 and flat[0][1] == -1
    assert flat[0][0].mode == "RGB"
    for split, n in (("train", 3), ("test", 2)):
        for label in (0, 1):
            for i in range(n):
                _image(tmp_path / "split" / split / f"c{label}" / f"{i}.png", i)
    task = load_task(f"folder:{tmp_path / 'split'}", 16)
    assert (task.num_classes, len(task.train), len(task.test)) == (2, 6, 4)
    with pytest.raises(VitsslError, match="no split 'val'"):
        open_dataset(f"folder:{tmp_path / 'flat'}:val")


def test_folder_bad_input(tmp_path):
    with pytest.raises(VitsslError) as exc:
        open_dataset(f"folder:{tmp_path / 'missing'}")
    assert "missing" in _one_line(exc) and "no such directory" in str(exc.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(VitsslError, match="holds no images") as exc:
        open_dataset(f"folder:{tmp_path / 'empty'}")
    _one_line(exc)
    _image(tmp_path / "mixed" / "a" / "0.png", 0)
    _image(tmp_path / "mixed" / "loose.png", 1)
    with pytest.raises(VitsslError, match="mixes images"):
        open_dataset(f"folder:{tmp_path / 'mixed'}")
    _image(tmp_path / "hole" / "a" / "0.png", 0)
    (tmp_path / "hole" / "b").mkdir()
    with pytest.raises(VitsslError, match="'b' has no images"):
        open_dataset(f"folder:{tmp_path / 'hole'}")


def _vtab_task(root: Path, task: str, labels: dict[str, list[int]]) -> dict:
    """The exact PAPER.md layout: list files + images/<split>/NNNNNN.jpg."""
    folder = root / task
    pixels = {}
    for split in ("train800", "val200", "test"):
        lines = []
        for i, label in enumerate(labels[split]):
            rel = f"images/{split}/{i:06d}.jpg"
            pixels[rel] = _image(folder / rel, len(pixels))
            lines.append(f"{rel} {label}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    both = (folder / "train800.txt").read_text() + (folder / "val200.txt").read_text()
    (folder / "train800val200.txt").write_text(both)
    return pixels


def test_vtab1k_layout_splits_and_class_count(tmp_path):
    labels = {"train800": [0, 3, 5, 1], "val200": [2, 2], "test": [4, 0, 1]}
    _vtab_task(tmp_path, "dtd", labels)
    spec = f"vtab1k:{tmp_path / 'dtd'}"
    sizes = {split: len(open_dataset(spec, split))
             for split in ("train800", "val200", "train800val200", "test", "train", "val")}
    assert sizes == {"train800": 4, "val200": 2, "train800val200": 6, "test": 3, "train": 6,
                     "val": 2}
    test = open_dataset(f"{spec}:test")
    assert [test[i][1] for i in range(3)] == labels["test"]
    # The class count comes from the VTAB table (dtd: 47), not from the 6 labels seen.
    assert test.num_classes == 47
    task = load_task(spec, 24)
    assert task.num_classes == 47 and len(task.train) == 6 and len(task.test) == 3
    image, label = task.train[4]
    assert image.shape == (3, 24, 24) and label == 2
    # A JPEG read back through the list equals a direct decode of the file.
    direct = np.asarray(Image.open(tmp_path / "dtd/images/val200/000001.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(open_dataset(f"{spec}:val200")[1][0]), direct)


def test_vtab1k_paths_with_spaces_parse_with_rsplit(tmp_path):
    folder = tmp_path / "eurosat"
    _image(folder / "images" / "test" / "a b.jpg", 0)
    for split in ("train800", "val200", "train800val200", "test"):
        (folder / f"{split}.txt").write_text("images/test/a b.jpg 9\n\n")
    dataset = open_dataset(f"vtab1k:{folder}:test")
    assert len(dataset) == 1 and dataset[0][1] == 9 and dataset.num_classes == 10


@pytest.mark.parametrize("line, match", [
    ("images/test/000000.jpg", "expected '<image path> <label>'"),
    ("images/test/000000.jpg x1", "is not an integer"),
    ("images/test/000000.jpg 16", r"label 16 outside 0\.\.15"),
    ("images/test/000000.jpg -1", r"label -1 outside 0\.\.15"),
    ("images/test/999999.jpg 3", "does not exist"),
])
def test_vtab1k_bad_lines_name_file_and_line(tmp_path, line, match):
    folder = tmp_path / "dsprites_loc"
    _image(folder / "images" / "test" / "000000.jpg", 0)
    (folder / "test.txt").write_text(f"images/test/000000.jpg 1\n{line}\n")
    with pytest.raises(VitsslError, match=match) as exc:
        open_dataset(f"vtab1k:{folder}:test")
    assert f"{folder / 'test.txt'}:2:" in _one_line(exc)


def test_vtab1k_missing_task_list_and_unknown_name(tmp_path):
    with pytest.raises(VitsslError, match="no such task directory"):
        open_dataset(f"vtab1k:{tmp_path / 'cifar'}")
    (tmp_path / "cifar").mkdir()
    with pytest.raises(VitsslError, match="missing list file .*train800val200.txt"):
        open_dataset(f"vtab1k:{tmp_path / 'cifar'}")
    (tmp_path / "my_task").mkdir()  # a custom task: its count is inferred from the lists
    with pytest.raises(VitsslError, match="missing list file .*train800.txt"):
        open_dataset(f"vtab1k:{tmp_path / 'my_task'}")
    with pytest.raises(VitsslError, match="no split 'holdout'"):
        open_dataset(f"vtab1k:{tmp_path / 'cifar'}", "holdout")


def test_16_bit_grey_images_keep_every_bit(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    from vitssl.data.decode import load_image

    bands = load_image(tmp_path / "deep.png")  # one band, scaled by 16 bits, not by 255
    assert bands.shape == (1, 12, 10) and bands.dtype == torch.float32
    np.testing.assert_array_equal(np.round(bands[0].numpy() * 65535).astype(np.uint16), values)
