"""``vitssl shard``: folders and built-ins to webdataset shards and back, atomically."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitssl.cli import main
from vitssl.data import shard as shard_module
from vitssl.data.decode import SkipLog, decode_image
from vitssl.data.shard import write_shards
from vitssl.data.source import open_dataset
from vitssl.data.wds import expand_urls, shard_samples
from vitssl.errors import VitsslError


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    formats = ["jpg", "png", "bmp", "webp"]
    for label, name in enumerate(["cat", "dog"]):
        for i in range(5):
            pixels = rng.integers(0, 256, (12 + i, 17, 3), dtype=np.uint8)
            path = root / name / f"img{i}.{formats[(i + label) % 4]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


def _read_back(pattern: str) -> list[dict]:
    errors = SkipLog("raise")
    return [s for url in expand_urls(pattern) for s in shard_samples(url, errors)]


def test_folder_round_trips_through_shards(tmp_path, capsys):
    _folder(tmp_path / "imgs")
    out = tmp_path / "shards" / "part-%03d.tar"
    assert main(["shard", "--data", f"folder:{tmp_path / 'imgs'}", "--output", str(out),
                 "--maxcount", "4"]) == 0
    assert "wrote 10 samples in 3 shard(s)" in capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == ["part-000.tar", "part-001.tar", "part-002.tar"]
    samples = _read_back(str(tmp_path / "shards" / "part-{000..002}.tar"))
    source = open_dataset(f"folder:{tmp_path / 'imgs'}")
    assert len(samples) == len(source) == 10
    for index, sample in enumerate(samples):
        path, label = source.samples[index]
        assert sample["__key__"] == f"{index:08d}" and int(sample["cls"]) == label
        ext = "png" if path.suffix == ".bmp" else path.suffix[1:]
        assert [k for k in sample if not k.startswith("__")] == sorted(["cls", "json", ext])
        assert json.loads(sample["json"]) == {"source": str(path)}
        if path.suffix != ".bmp":  # stored unchanged, byte for byte
            assert sample[ext] == path.read_bytes()
        decoded = np.asarray(decode_image(sample[ext], "x"))
        assert np.array_equal(decoded, np.asarray(source[index][0]))


def test_builtin_tensors_round_trip_losslessly(tmp_path):
    paths = write_shards("builtin:digits:test", str(tmp_path / "d-%02d.tar"), maxcount=200)
    assert [p.name for p in paths] == ["d-00.tar", "d-01.tar", "d-02.tar"]
    samples = _read_back(str(tmp_path / "d-{00..02}.tar"))
    digits = open_dataset("builtin:digits:test")
    assert len(samples) == len(digits) == 500
    for index in (0, 1, 250, 499):
        image, label = digits[index]
        back = np.asarray(decode_image(samples[index]["png"], "x"))
        assert np.array_equal(back, image.permute(1, 2, 0).numpy())
        assert int(samples[index]["cls"]) == label
        assert json.loads(samples[index]["json"]) == {"source": f"builtin:digits:test#{index}"}


def test_unlabelled_data_has_no_cls_and_wds_reshards(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(flat / f"{i}.png")
    write_shards(f"folder:{flat}", str(tmp_path / "a-%d.tar"), maxcount=3)
    first = _read_back(str(tmp_path / "a-{0..1}.tar"))
    assert len(first) == 5 and all("cls" not in s for s in first)
    write_shards(f"wds:{tmp_path}/a-{{0..1}}.tar", str(tmp_path / "b-%d.tar"), maxcount=5)
    again = _read_back(str(tmp_path / "b-0.tar"))
    assert [(s["__key__"], s["png"]) for s in again] == [(s["__key__"], s["png"]) for s in first]


def test_interrupted_run_leaves_only_complete_shards(tmp_path, monkeypatch):
    _folder(tmp_path / "imgs")
    real = shard_module._map_samples

    def failing(spec, skips):
        samples, total = real(spec, skips)

        def gen():
            for i, sample in enumerate(samples):
                if i == 6:
                    raise KeyboardInterrupt
                yield sample
        return gen(), total

    monkeypatch.setattr(shard_module, "_map_samples", failing)
    with pytest.raises(KeyboardInterrupt):
        write_shards(f"folder:{tmp_path / 'imgs'}", str(tmp_path / "o" / "s-%d.tar"), maxcount=4)
    # Shard 0 (4 samples) was completed; shard 1 was half written and must not exist.
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["s-0.tar"]
    with tarfile.open(tmp_path / "o" / "s-0.tar") as tar:
        assert len(tar.getnames()) == 12  # 4 samples: image, cls and json each


def test_bad_shard_arguments(tmp_path, capsys):
    with pytest.raises(VitsslError, match="integer field"):
        write_shards("builtin:digits", str(tmp_path / "fixed.tar"))
    assert main(["shard", "--data", f"folder:{tmp_path / 'nope'}", "--output",
                 str(tmp_path / "s-%d.tar")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: folder:") and "no such directory" in err and "\n" not in err
    with pytest.raises(VitsslError, match="maxcount"):
        write_shards("builtin:digits", str(tmp_path / "s-%d.tar"), maxcount=0)


def test_undecodable_images_are_skipped_and_counted(tmp_path, capsys):
    _folder(tmp_path / "imgs")
    bad = [tmp_path / "imgs" / "cat" / "img1.png", tmp_path / "imgs" / "dog" / "img3.jpg"]
    bad[0].write_bytes(b"not an image at all")
    bad[1].write_bytes(bad[1].read_bytes()[:40])  # a truncated JPEG
    source = open_dataset(f"folder:{tmp_path / 'imgs'}")
    bad_index = [i for i, (p, _) in enumerate(source.samples) if p in bad]
    assert len(bad_index) == 2
    assert main(["shard", "--data", f"folder:{tmp_path / 'imgs'}", "--output",
                 str(tmp_path / "s" / "p-%d.tar"), "--maxcount", "100"]) == 0
    err = capsys.readouterr().err
    assert "wrote 8 samples in 1 shard(s)" in err
    assert "skipped 2 undecodable or unreadable sample(s)" in err
    samples = _read_back(str(tmp_path / "s" / "p-0.tar"))
    keys = [s["__key__"] for s in samples]
    assert keys == [f"{i:08d}" for i in range(10) if i not in bad_index]
    for sample in samples:  # each traces back to its file, and the bytes are that file's
        path = Path(json.loads(sample["json"])["source"])
        ext = next(k for k in ("jpg", "png", "webp") if k in sample)
        if path.suffix != ".bmp":
            assert sample[ext] == path.read_bytes()
        assert path not in bad


def test_wds_resharding_skips_bad_images_and_keeps_provenance(tmp_path, capsys):
    from webdataset import TarWriter

    good = io.BytesIO()
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(good, format="PNG")
    with open(tmp_path / "in-0.tar", "wb") as fh, TarWriter(fh, encoder=False) as writer:
        writer.write({"__key__": "a", "png": good.getvalue(), "cls": b"1"})
        writer.write({"__key__": "b", "png": b"garbage", "cls": b"2"})
        writer.write({"__key__": "c", "cls": b"3"})  # no image at all
        writer.write({"__key__": "d", "png": good.getvalue(),
                      "json": b'{"source": "/orig/d.png"}'})
    write_shards(f"wds:{tmp_path}/in-0.tar", str(tmp_path / "out-%d.tar"))
    err = capsys.readouterr().err
    assert "wrote 2 samples" in err and "skipped 2 undecodable or unreadable" in err
    out = _read_back(str(tmp_path / "out-0.tar"))
    assert [s["__key__"] for s in out] == ["a", "d"]
    assert json.loads(out[0]["json"]) == {"source": f"{tmp_path}/in-0.tar#a"}
    assert json.loads(out[1]["json"]) == {"source": "/orig/d.png"}  # kept as it was
