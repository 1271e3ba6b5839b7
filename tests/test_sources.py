"""Data sources are plugins: the spec kinds come from the registry; one file adds a kind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from readme_code import readme_code

from vitssl.config import DataConfig
from vitssl.data import wds
from vitssl.data.pipeline import data_info, pretrain_batches, validate_data_config
from vitssl.data.source import parse_spec
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry


def test_a_new_source_is_one_file_and_one_registration(tmp_path):
    plugin = tmp_path / "site"
    (plugin / "vitssl_npz-0.1.dist-info").mkdir(parents=True)
    (plugin / "vitssl_npz.py").write_text(readme_code("### Writing a data source"))
    (plugin / "vitssl_npz-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vitssl-npz\nVersion: 0.1\n")
    (plugin / "vitssl_npz-0.1.dist-info" / "entry_points.txt").write_text(
        "[vitssl]\nnpz = vitssl_npz\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "toy.npz", train_images=rng.integers(0, 256, (16, 8, 8, 3), np.uint8),
             train_labels=np.arange(16) % 2)
    env = {**os.environ, "PYTHONPATH": str(plugin), "OMP_NUM_THREADS": "1"}
    script = textwrap.dedent(f"""
        from vitssl.config import DataConfig
        from vitssl.data.source import resolve_augmentation
        from vitssl.data.pipeline import data_info, pretrain_batches
        cfg = resolve_augmentation(DataConfig(spec="npz:{tmp_path / 'toy.npz'}"))
        info = data_info(cfg)
        batch = next(iter(pretrain_batches(cfg, image_size=8, batch_size=4, seed=0,
                                           num_steps=1)))
        print(info.labelled, info.num_classes, cfg.hflip, tuple(batch["image"].shape))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "2", "False", "(4,", "3,", "8,", "8)"]
    listed = subprocess.run([sys.executable, "-m", "vitssl", "plugins"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert "Images and labels in a .npz file" in listed.stdout


def test_spec_kinds_come_from_the_registry():
    assert {"builtin", "folder", "idx", "vtab1k", "wds"} <= set(get_registry().entries["sources"])
    with pytest.raises(VitsslError, match="bad data spec 'nope:x': expected one of .*idx:PATH"):
        parse_spec("nope:x")
    assert parse_spec("wds:pipe:cat a.tar:test").target == "pipe:cat a.tar:test"
    assert parse_spec("idx:/data/fashion:test").split == "test"


def _shards(tmp_path, labelled=True):
    from webdataset import TarWriter

    rng = np.random.default_rng(0)
    for s in range(2):
        with TarWriter(str(tmp_path / f"shard-{s}.tar")) as writer:
            for i in range(6):
                out = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(out, "PNG")
                sample = {"__key__": f"{s}{i}", "png": out.getvalue()}
                if labelled:
                    sample["cls"] = str(i % 2).encode()
                writer.write(sample)
    return f"wds:{tmp_path}/shard-{{0..1}}.tar"


def test_wds_first_shard_is_peeked_once_per_run(tmp_path, monkeypatch):
    spec = _shards(tmp_path)
    peeks = []
    real = wds.first_sample
    monkeypatch.setattr(wds, "first_sample", lambda urls: peeks.append(urls) or real(urls))
    cfg = DataConfig(spec=spec, options={"shuffle_buffer": 1})
    assert data_info(cfg).labelled and data_info(cfg).num_classes is None
    batches = pretrain_batches(cfg, image_size=8, batch_size=4, seed=0, num_steps=2)
    assert len(peeks) == 1 and batches.labelled and "label" in next(iter(batches))


def test_both_batch_kinds_expose_the_same_attributes(tmp_path):
    spec = _shards(tmp_path)
    kinds = [pretrain_batches(DataConfig(), image_size=8, batch_size=4, seed=0, num_steps=2),
             pretrain_batches(DataConfig(spec=spec), image_size=8, batch_size=4, seed=0,
                              num_steps=2)]
    for batches in kinds:
        list(batches)
        assert batches.skipped == 0 and batches.resume_note is None
        assert batches.labelled is True
    assert kinds[0].num_classes == 10 and kinds[0].stream_state() is None
    assert kinds[1].num_classes is None
    assert kinds[1].stream_state()["workers"] == kinds[1].position["workers"]


def test_data_options_reach_builtin_factories():
    cfg = DataConfig(spec="builtin:photos", options={"size": 24, "length": 7})
    batches = pretrain_batches(cfg, image_size=8, batch_size=4, seed=0, num_steps=1)
    assert len(batches.batches.dataset) == 7 and batches.batches.dataset.size == 24
    with pytest.raises(VitsslError, match="builtin:photos: bad options"):
        pretrain_batches(DataConfig(spec="builtin:photos", options={"colour": 1}),
                         image_size=8, batch_size=4, seed=0, num_steps=1)
    with pytest.raises(VitsslError, match=r"folder: unknown data.options \['x'\]; accepted: lay"):
        data_info(DataConfig(spec="folder:/tmp", options={"x": 1}))


@pytest.mark.parametrize("change, match", [
    ({"num_workers": -1}, "num_workers"), ({"crop_scale": (0.5, 1.2)}, "crop_scale"),
    ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
    ({"options": ["root"]}, "data.options must be a mapping"),
])
def test_validate_data_config(change, match):
    validate_data_config(DataConfig())  # unset augmentation is fine
    with pytest.raises(VitsslError, match=match):
        validate_data_config(DataConfig(**change))


@pytest.mark.parametrize("options, match", [
    ({"shuffle_buffer": "big"}, "shuffle_buffer must be a whole number"),
    ({"resampled": "yes"}, "resampled true, false or null"),
    ({"shuffle": 1}, r"wds: unknown data.options \['shuffle'\]; accepted: shuffle_buffer"),
])
def test_wds_options_are_checked(tmp_path, options, match):
    with pytest.raises(VitsslError, match=match):
        data_info(DataConfig(spec=_shards(tmp_path), options=options))
