"""``idx:PATH``, ``builtin:fashion-mnist`` and ``builtin:mnist`` on small IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vitssl.config import DataConfig, load_config
from vitssl.data import idx
from vitssl.data.pipeline import data_info, pretrain_batches
from vitssl.data.source import open_dataset
from vitssl.data.tasks import load_task
from vitssl.errors import VitsslError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(values: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in values.shape)
    return header + values.astype(np.uint8).tobytes()


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *,
                gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for kind, dims, values in (("images", 3, images), ("labels", 1, labels)):
        data = idx_bytes(values)
        name = f"{prefix}-{kind}-idx{dims}-ubyte"
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


def small_set(root: Path, *, gz: bool, n_train: int = 12, n_test: int = 6,
              size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    labels = np.arange(n_train) % 4
    write_split(root, "train", images, labels, gz=gz)
    write_split(root, "t10k", images[:n_test], (np.arange(n_test) % 3), gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_reads_every_image_and_label(tmp_path, gz):
    images, labels = small_set(tmp_path, gz=gz)
    train = open_dataset(f"idx:{tmp_path}")
    assert len(train) == 12 and train.num_classes == 4
    for i in (0, 7, 11):
        image, label = train[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 6)
        assert all(torch.equal(image[c], torch.from_numpy(images[i])) for c in range(3))
        assert label == labels[i]
    test = open_dataset(f"idx:{tmp_path}:test")
    assert len(test) == 6 and test.num_classes == 4  # classes from both label files
    assert data_info(DataConfig(spec=f"idx:{tmp_path}")).num_classes == 4


def test_idx_feeds_pretraining_evaluation_and_shards(tmp_path):
    from vitssl.data.shard import write_shards

    small_set(tmp_path / "idx", gz=True)
    cfg = DataConfig(spec=f"idx:{tmp_path / 'idx'}")
    batches = pretrain_batches(cfg, image_size=8, batch_size=4, seed=0, num_steps=2)
    assert batches.labelled and batches.num_classes == 4 and batches.stream_state() is None
    batch = next(iter(batches))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["label"].tolist()[0] in range(4)
    task = load_task(f"idx:{tmp_path / 'idx'}", 8)
    assert len(task.train) == 12 and len(task.test) == 6 and task.num_classes == 4
    shards = write_shards(f"idx:{tmp_path / 'idx'}", str(tmp_path / "s" / "shard-%03d.tar"),
                          maxcount=5)
    assert len(shards) == 3


def test_idx_defaults_to_no_augmentation(tmp_path):
    from vitssl.data.source import resolve_augmentation

    resolved = resolve_augmentation(DataConfig(spec=f"idx:{tmp_path}"))
    assert resolved.augment is False and resolved.hflip is False


def _damage(root: Path, name: str, how) -> Path:
    path = root / name
    path.write_bytes(how(path.read_bytes()))
    return path


@pytest.mark.parametrize("name, how, match", [
    ("train-images-idx3-ubyte", lambda b: b[:-5], "is truncated: its header says 12 x 6 x 6"),
    ("train-images-idx3-ubyte", lambda b: b + b"xx", "has extra bytes"),
    ("train-images-idx3-ubyte", lambda b: b"\0\0\x08\x01" + b[4:], "magic number 0x00000801"),
    ("train-labels-idx1-ubyte", lambda b: b[:2], "not even a magic number"),
    ("train-labels-idx1-ubyte", lambda b: b[:6], "inside its header"),
    ("train-labels-idx1-ubyte",
     lambda b: bytes(b[:4]) + (11).to_bytes(4, "big") + b[8:-1], "holds 12 images but"),
])
def test_damaged_files_are_one_line_naming_the_file(tmp_path, name, how, match):
    small_set(tmp_path, gz=False)
    path = _damage(tmp_path, name, how)
    with pytest.raises(VitsslError, match=match) as exc:
        open_dataset(f"idx:{tmp_path}")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("how", [lambda b: b[: len(b) // 2], lambda b: b"not gzip at all"])
def test_damaged_gzip_is_one_line(tmp_path, how):
    small_set(tmp_path, gz=True)
    path = _damage(tmp_path, "train-images-idx3-ubyte.gz", how)
    with pytest.raises(VitsslError, match="not a complete gzip file") as exc:
        open_dataset(f"idx:{tmp_path}")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_files_and_splits(tmp_path):
    small_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(VitsslError, match="missing t10k-labels-idx1-ubyte"):
        open_dataset(f"idx:{tmp_path}:test")
    with pytest.raises(VitsslError, match="no split 'val'"):
        open_dataset(f"idx:{tmp_path}", "val")
    with pytest.raises(VitsslError, match="no such directory"):
        open_dataset(f"idx:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitsslError, match="no train split"):
        open_dataset(f"idx:{tmp_path / 'empty'}")


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    """Neither $VITSSL_DATA nor the Debian directory holds anything."""
    monkeypatch.delenv("VITSSL_DATA", raising=False)
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "system")


def test_builtin_fashion_mnist_looks_in_vitssl_data(tmp_path, monkeypatch, no_system_copy):
    small_set(tmp_path / "data" / "fashion-mnist", gz=True)
    monkeypatch.setenv("VITSSL_DATA", str(tmp_path / "data"))
    train = open_dataset("builtin:fashion-mnist")
    assert len(train) == 12 and train.num_classes == 10
    assert len(open_dataset("builtin:fashion-mnist:test")) == 6
    with pytest.raises(VitsslError, match="builtin:mnist: no train-images"):
        open_dataset("builtin:mnist")


def test_builtin_root_option_reaches_the_dataset_from_a_config(tmp_path, no_system_copy):
    small_set(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    small_set(tmp_path / "tv" / "MNIST" / "raw", gz=True, n_train=8)
    cfg = load_config(None, ["data.spec=builtin:fashion-mnist",
                             f"data.options.root={tmp_path / 'tv'}"])
    assert cfg.data.options == {"root": str(tmp_path / "tv")}
    batches = pretrain_batches(cfg.data, image_size=8, batch_size=4, seed=0, num_steps=1)
    assert batches.num_classes == 10 and len(batches.batches.dataset) == 12
    assert len(open_dataset("builtin:mnist", root=tmp_path / "tv")) == 8


def test_nothing_found_says_where_it_looked_and_how_to_install(no_system_copy, tmp_path):
    with pytest.raises(VitsslError) as exc:
        open_dataset("builtin:fashion-mnist")
    message = str(exc.value)
    assert "\n" not in message and str(tmp_path / "system" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "VITSSL_DATA" in message
    with pytest.raises(VitsslError, match="no train-images.* in .*elsewhere.*data.options.root"):
        open_dataset("builtin:fashion-mnist", root=tmp_path / "elsewhere")


def test_fashion_mnist_declares_its_augmentation_and_is_listed():
    from vitssl.data.source import dataset_augmentation
    from vitssl.plugins import get_registry

    assert {"fashion-mnist", "mnist"} <= set(get_registry().names("datasets"))
    assert "idx" in get_registry().names("sources")
    assert dataset_augmentation("builtin:fashion-mnist") == idx.FashionMNIST.augmentation
    assert dataset_augmentation("builtin:mnist").hflip is False


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="the real files are not installed (apt-get install "
                           "dataset-fashion-mnist)")
def test_real_fashion_mnist_files(monkeypatch):
    monkeypatch.delenv("VITSSL_DATA", raising=False)
    train, test = open_dataset("builtin:fashion-mnist"), open_dataset(f"idx:{DEBIAN}:test")
    assert (len(train), len(test), train.num_classes, test.num_classes) == (60_000, 10_000, 10, 10)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    image, label = train[0]
    assert image.shape == (3, 28, 28) and image.dtype == torch.uint8 and label == 9
