"""``wds:`` pretraining streams: coverage, splitting, reproducibility, skipped samples."""

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from vitssl.config import DataConfig, normalisation
from vitssl.data.pipeline import pretrain_batches
from vitssl.errors import VitsslError


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((10, 12, 3), value % 256, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _write(path: Path, samples: list[dict]) -> None:
    with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        for sample in samples:
            writer.write(sample)


def _shards(root: Path, num_shards: int, per_shard: int, labelled: bool = True) -> str:
    """Shards whose ``cls`` is the sample's id, so batches reveal which samples they hold."""
    for s in range(num_shards):
        samples = []
        for i in range(per_shard):
            uid = s * per_shard + i
            sample = {"__key__": f"s{s}-{i:04d}", "png": _png(uid)}
            if labelled:
                sample["cls"] = str(uid).encode()
            samples.append(sample)
        _write(root / f"shard-{s:02d}.tar", samples)
    return f"wds:{root}/shard-{{00..{num_shards - 1:02d}}}.tar"


def _batches(spec: str, *, steps: int, batch: int, start_step: int = 0, rank: int = 0,
             world_size: int = 1, stream_state: dict | None = None,
             save_after: int | None = None, **data) -> tuple[list[dict], object]:
    """All batches; with ``save_after=k`` the stream also keeps ``saved``, its position
    after k batches as a checkpoint holds it; ``shuffle_buffer`` and ``resampled`` go to
    ``data.options``."""
    options = {k: data.pop(k) for k in ("shuffle_buffer", "resampled") if k in data}
    cfg = DataConfig(spec=spec, options=options, **data)
    stream = pretrain_batches(cfg, image_size=8, batch_size=batch, seed=3, num_steps=steps,
                              start_step=start_step, rank=rank, world_size=world_size,
                              stream_state=stream_state)
    out = []
    for batch_dict in stream:
        out.append(batch_dict)
        if len(out) == save_after:
            stream.saved = {"world_size": world_size,
                            "ranks": [copy.deepcopy(stream.stream_state())]}
    return out, stream


def _ids(batches: list[dict]) -> list[int]:
    return [int(i) for b in batches for i in b["label"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_pass_covers_every_sample_once_and_is_shuffled(tmp_path, workers):
    spec = _shards(tmp_path, num_shards=4, per_shard=10)
    batches, stream = _batches(spec, steps=8, batch=5, num_workers=workers, shuffle_buffer=8)
    assert stream.labelled and len(stream) == 8 and len(batches) == 8
    first_pass = _ids(batches)
    assert sorted(first_pass) == list(range(40))
    assert first_pass != sorted(first_pass)
    b = batches[0]
    assert b["image"].shape == b["pixels"].shape == (5, 3, 8, 8) and "_skipped" not in b
    mean = torch.tensor(cfg_mean()).view(3, 1, 1)
    std = torch.tensor(cfg_std()).view(3, 1, 1)
    assert torch.allclose(b["image"], (b["pixels"] - mean) / std, atol=1e-6)
    # Uniform images: augmentation keeps the value, so pixels identify the sample too.
    ids = b["label"].tolist()
    assert torch.allclose(b["pixels"][:, 0, 0, 0], torch.tensor(ids) / 255.0, atol=1e-6)


def cfg_mean():
    return normalisation(DataConfig())[0]  # unset: ImageNet's


def cfg_std():
    return normalisation(DataConfig())[1]


def test_split_by_node_gives_disjoint_ranks(tmp_path):
    spec = _shards(tmp_path, num_shards=4, per_shard=6)
    seen = []
    for rank in (0, 1):
        batches, _ = _batches(spec, steps=4, batch=3, rank=rank, world_size=2, resampled=False,
                              shuffle_buffer=1)
        seen.append(set(_ids(batches)))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))


def test_distributed_default_resamples_with_equal_batch_counts(tmp_path):
    spec = _shards(tmp_path, num_shards=3, per_shard=4)
    per_rank = [_batches(spec, steps=7, batch=2, rank=r, world_size=4)[0] for r in range(4)]
    assert [len(b) for b in per_rank] == [7, 7, 7, 7]
    assert len({tuple(_ids(b)) for b in per_rank}) > 1
    with pytest.raises(VitsslError, match="cannot be split over 4 ranks"):
        _batches(spec, steps=2, batch=2, world_size=4, resampled=False)


def test_without_a_saved_position_a_start_step_is_a_fresh_seeded_draw(tmp_path):
    spec = _shards(tmp_path, num_shards=3, per_shard=8)
    kw = dict(steps=6, batch=4, num_workers=2, shuffle_buffer=10)
    a, _ = _batches(spec, **kw)
    b, _ = _batches(spec, **kw)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    resumed, again = _batches(spec, start_step=2, **kw), _batches(spec, start_step=2, **kw)
    assert len(resumed[0]) == 4
    assert [_ids([x]) for x in resumed[0]] == [_ids([x]) for x in again[0]]
    assert [_ids([x]) for x in resumed[0]] != [_ids([x]) for x in a[:4]]
    assert "fresh draw seeded by step 2" in resumed[1].resume_note


@pytest.mark.parametrize("workers, buffer, stop", [(0, 8, 3), (2, 8, 5), (2, 1, 4)])
def test_saved_position_continues_the_stream_exactly(tmp_path, workers, buffer, stop):
    # 4 shards x 10 samples, batches of 6: the stops fall mid-shard, with a partly
    # filled or draining buffer, and the run crosses into the second pass.
    spec = _shards(tmp_path, num_shards=4, per_shard=10)
    kw = dict(steps=11, batch=6, num_workers=workers, shuffle_buffer=buffer)
    full, _ = _batches(spec, **kw)
    _, first = _batches(spec, save_after=stop, **kw)
    rest, resumed = _batches(spec, start_step=stop, stream_state=first.saved, **kw)
    assert resumed.resume_note is None
    assert [_ids([b]) for b in rest] == [_ids([b]) for b in full[stop:]]
    for a, b in zip(rest, full[stop:], strict=True):
        assert torch.equal(a["image"], b["image"])  # the augmentation continues too


def test_another_worker_count_resumes_at_the_next_shard_boundary(tmp_path):
    spec = _shards(tmp_path, num_shards=6, per_shard=10)
    kw = dict(steps=8, batch=5, shuffle_buffer=1)
    before, first = _batches(spec, save_after=3, num_workers=2, **kw)
    rest, resumed = _batches(spec, start_step=3, stream_state=first.saved, num_workers=1, **kw)
    assert "next shard boundary" in resumed.resume_note and "\n" not in resumed.resume_note
    # Each worker had started one shard (worker 0 two batches, worker 1 one): the resumed
    # stream reads the four shards nobody had opened, each from its first sample.
    started = {i // 10 for i in _ids(before[:3])}
    assert len(started) == 2
    read = _ids(rest)
    assert not {i // 10 for i in read} & started and len(read) == 25
    assert [i % 10 for i in read[:10]] == list(range(10))


def test_unlabelled_shards_and_pipe_urls(tmp_path):
    _shards(tmp_path, num_shards=2, per_shard=4, labelled=False)
    spec = f"wds:pipe:cat {tmp_path}/shard-{{00..01}}.tar"
    batches, stream = _batches(spec, steps=2, batch=4, shuffle_buffer=1)
    assert not stream.labelled and all("label" not in b for b in batches)
    values = sorted(round(float(v) * 255) for b in batches for v in b["pixels"][:, 0, 0, 0])
    assert values == list(range(8))


def _damaged(tmp_path: Path, corrupt: bool = True) -> tuple[str, list[int]]:
    """One shard: 3 good, a corrupt image, 3 good, then cut inside the 8th sample's image."""
    samples = [{"__key__": f"k{i}", "cls": str(i).encode(), "png": _png(i)} for i in range(8)]
    if corrupt:
        samples[3]["png"] = _png(3)[:40]  # a PNG cut short: header fine, data missing
    path = tmp_path / "bad.tar"
    _write(path, samples)
    data = path.read_bytes()
    cut = data.index(samples[7]["png"][:64]) + 30
    path.write_bytes(data[:cut])
    return f"wds:{path}", [0, 1, 2, 4, 5, 6]


def test_corrupt_image_and_truncated_shard_are_skipped_and_counted(tmp_path, caplog):
    spec, good = _damaged(tmp_path)
    batches, stream = _batches(spec, steps=6, batch=1, shuffle_buffer=1)
    assert _ids(batches) == good and stream.skipped == 1  # the corrupt image
    batches, stream = _batches(spec, steps=7, batch=1, shuffle_buffer=1)
    # The 7th batch starts the second pass; the truncation was met on the way.
    assert _ids(batches) == good + [0] and stream.skipped == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "key k3" in messages and "truncated" in messages and "key k7" in messages


def test_corrupt_samples_across_shards_with_workers(tmp_path):
    spec = _shards(tmp_path, num_shards=3, per_shard=5)
    bad_spec, _ = _damaged(tmp_path)
    spec = spec + "::" + bad_spec.removeprefix("wds:")
    batches, stream = _batches(spec, steps=12, batch=2, num_workers=2, shuffle_buffer=4)
    assert set(_ids(batches)) <= set(range(15)) | {0, 1, 2, 4, 5, 6}
    assert stream.skipped >= 1


@pytest.mark.parametrize("which, match", [("corrupt", "key k3"), ("truncated", "truncated")])
def test_on_error_raise_makes_damage_fatal(tmp_path, which, match):
    spec, _ = _damaged(tmp_path, corrupt=which == "corrupt")
    for workers in (0, 2):
        with pytest.raises(VitsslError, match=match) as exc:
            _batches(spec, steps=8, batch=1, shuffle_buffer=1, on_error="raise",
                     num_workers=workers)
        assert "\n" not in str(exc.value) and "on_error=skip" in str(exc.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("resampled", [False, True])
def test_all_images_corrupt_ends_with_an_error_not_a_hang(tmp_path, resampled):
    _write(tmp_path / "junk.tar", [{"__key__": f"k{i}", "cls": b"0", "png": b"junk"}
                                   for i in range(3)])
    with pytest.raises(VitsslError, match="ran dry after 0 of 2 batches"):
        _batches(f"wds:{tmp_path}/junk.tar", steps=2, batch=1, resampled=resampled)


def test_bad_wds_specs(tmp_path):
    with pytest.raises(VitsslError, match="does not exist"):
        _batches(f"wds:{tmp_path}/none-{{0..3}}.tar", steps=1, batch=1)
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(VitsslError, match="no readable samples"):
        _batches(f"wds:{tmp_path}/empty.tar", steps=1, batch=1)
    with pytest.raises(VitsslError, match="on_error"):
        spec = _shards(tmp_path, num_shards=1, per_shard=2)
        _batches(spec, steps=1, batch=1, on_error="ignore")
