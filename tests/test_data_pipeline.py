"""Pretraining batches from map-style specs (folder:, builtin:) and the photos source."""

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, load_config
from vitssl.data import photos
from vitssl.data.pipeline import pretrain_batches
from vitssl.data.source import open_dataset
from vitssl.errors import VitsslError


def _batches(spec, steps=3, batch=4, start_step=0, **data):
    stream = pretrain_batches(DataConfig(spec=spec, **data), image_size=16, batch_size=batch,
                              seed=0, num_steps=steps, start_step=start_step)
    return list(stream), stream


def _folder(root, corrupt=False):
    rng = np.random.default_rng(0)
    for label in range(2):
        for i in range(4):
            path = root / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    if corrupt:
        (root / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def test_folder_spec_gives_labelled_deterministic_batches(tmp_path):
    _folder(tmp_path)
    batches, stream = _batches(f"folder:{tmp_path}", steps=4)
    assert stream.labelled and len(stream) == 4 and stream.skipped == 0
    assert batches[0]["image"].shape == (4, 3, 16, 16) and "_skipped" not in batches[0]
    assert batches[0]["pixels"].min() >= 0 and batches[0]["pixels"].max() <= 1
    labels = torch.cat([b["label"] for b in batches[:2]])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4  # one epoch: every image once
    resumed, _ = _batches(f"folder:{tmp_path}", steps=4, start_step=2)
    for a, b in zip(batches[2:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_corrupt_file_in_folder_is_skipped_or_fatal(tmp_path, caplog):
    _folder(tmp_path, corrupt=True)
    batches, stream = _batches(f"folder:{tmp_path}", steps=9, batch=1)
    assert stream.skipped == 1 and len(batches) == 9  # one epoch of 9 files, one replaced
    assert "broken.png" in caplog.text
    with pytest.raises(VitsslError, match="broken.png") as exc:
        _batches(f"folder:{tmp_path}", steps=9, batch=1, on_error="raise")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("spec, labelled", [("builtin:digits", True),
                                            ("builtin:dsprites-loc", True),
                                            ("builtin:photos", False)])
def test_builtin_specs(spec, labelled):
    batches, stream = _batches(spec, steps=2, num_workers=0)
    assert stream.labelled is labelled and len(batches) == 2
    assert ("label" in batches[0]) is labelled
    assert batches[0]["image"].shape == (4, 3, 16, 16)


def test_photos_are_bundled_files_read_without_network(monkeypatch):
    for name in photos.PHOTOS:
        assert (photos.photo_dir() / name).is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    photos._photos.cache_clear()
    dataset = open_dataset("builtin:photos", size=32, length=50)
    assert len(dataset) == 50 and dataset.num_classes is None
    image, label = dataset[3]
    assert image.size == (32, 32) and label == -1
    # Item i is a pure function of (split, i): the crop of the photo it names.
    number, box = dataset.crop_box(3)
    with Image.open(photos.photo_dir() / photos.PHOTOS[number]) as original:
        expected = original.convert("RGB").crop(box).resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.array_equal(np.asarray(open_dataset("builtin:photos", size=32, length=50)[3][0]),
                          np.asarray(image))
    test_split = open_dataset("builtin:photos:test", size=32, length=50)
    assert [test_split.crop_box(i) for i in range(5)] != [dataset.crop_box(i) for i in range(5)]
    assert len({dataset.crop_box(i)[0] for i in range(50)}) > 6


def test_data_config_fields_from_overrides():
    cfg = load_config(overrides=["data.on_error=raise", "data.options.resampled=true",
                                 "data.crop_ratio=[1.0, 1.0]"])
    assert (cfg.data.on_error, cfg.data.options, cfg.data.crop_ratio) == (
        "raise", {"resampled": True}, (1.0, 1.0))
    assert load_config().data.options == {}


def _corrupt_shard(path, count=12, bad=2):
    import io

    from webdataset import TarWriter

    with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        for i in range(count):
            out = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), 10 * i, np.uint8)).save(out, format="PNG")
            data = out.getvalue()[:30] if i == bad else out.getvalue()
            writer.write({"__key__": f"{i:04d}", "png": data})


@pytest.mark.parametrize("kind", ["wds", "folder"])
def test_pretraining_runs_from_wds_and_folder_specs(tmp_path, kind):
    import json

    from vitssl.cli import main

    if kind == "wds":
        _corrupt_shard(tmp_path / "s-0.tar")
        spec, skipped, options = f"wds:{tmp_path}/s-0.tar", 1, ["data.options.shuffle_buffer=1"]
    else:
        _folder(tmp_path / "imgs")
        spec, skipped, options = f"folder:{tmp_path / 'imgs'}", 0, []
    out = tmp_path / "run"
    code = main(["pretrain", "--objective", "masked-patch", "--data", spec, "--steps", "2",
                 "--batch-size", "4", "--image-size", "16", "--out", str(out),
                 "--set", "model.depth=1", "--set", "summary_eval.enabled=false",
                 *[a for o in options for a in ("--set", o)], "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped"] == skipped


def test_uint8_transport_matches_float_transform():
    from vitssl.data.batches import StepBatches
    from vitssl.data.transforms import pretrain_transform

    cfg = DataConfig(spec="builtin:photos", crop_scale=(0.35, 1.0))
    got = list(pretrain_batches(cfg, image_size=16, batch_size=4, seed=5, num_steps=2))
    direct = StepBatches(open_dataset("builtin:photos"), pretrain_transform(16), batch_size=4,
                         seed=5, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_steps=2)
    for step, batch in enumerate(got):
        reference = direct[step]
        assert reference["pixels"].dtype == torch.float32
        assert torch.equal(batch["pixels"], reference["pixels"])
        assert torch.equal(batch["image"], reference["image"])
        assert "label" not in batch and "label" not in reference
