"""Data-loading defaults: the worker-count rule, loader options, cheap decoding, exact resume."""

import copy
import dataclasses
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitssl.config import DataConfig, load_config
from vitssl.data.batches import StepBatches, loader_options
from vitssl.data.decode import EncodedImage, decode_image, load_image
from vitssl.data.pipeline import (
    PretrainBatches,
    local_ranks,
    pretrain_batches,
    resolve_num_workers,
    usable_cores,
)
from vitssl.data.source import get_source
from vitssl.data.transforms import REDUCE_FROM, PretrainTransform, pretrain_transform
from vitssl.devices import cgroup_cpu_limit, fit_cpu_threads
from vitssl.errors import VitsslError

# -- the "auto" rule ----------------------------------------------------------------------


@pytest.mark.parametrize("setting, source, cores, ranks, expected", [
    ("auto", "folder", 2, 1, 1),        # one core for the loop, one worker
    ("auto", "wds", 16, 1, 15),
    ("auto", "vtab1k", 16, 4, 3),       # torchrun: 4 cores per rank
    ("auto", "folder", 128, 1, 16),     # capped
    ("auto", "folder", 1, 1, 0),        # a single core: the main process
    ("auto", "wds", 8, 8, 0),
    ("auto", "my-plugin", 4, 1, 3),     # a source is taken to decode unless it says otherwise
    ("auto", "builtin", 64, 1, 0),      # in memory: no workers
    ("auto", "idx", 64, 1, 0),
    (0, "folder", 64, 1, 0),            # a count is used as it is
    (3, "builtin", 2, 1, 3),
])
def test_auto_rule_from_cores_ranks_and_source(setting, source, cores, ranks, expected):
    in_memory = source != "my-plugin" and get_source(source).in_memory
    assert resolve_num_workers(setting, in_memory=in_memory, cores=cores,
                               ranks=ranks) == expected


def test_cores_come_from_the_affinity_mask_and_ranks_from_torchrun(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
        assert usable_cores() == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_ranks(4) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 of the 4 ranks share this machine
    assert local_ranks(4) == 2


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, monkeypatch):
    root, own = tmp_path / "cgroup", tmp_path / "self-cgroup"
    _write(own, "0::/job/step\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "job" / "cpu.max", "150000 100000\n")  # 1.5 CPUs: 2 usable
    _write(root / "job" / "step" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, own) == 2
    _write(root / "job" / "step" / "cpu.max", "50000 100000\n")  # the tighter one wins
    assert cgroup_cpu_limit(root, own) == 1
    v1 = tmp_path / "v1"
    _write(v1 / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(v1 / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "missing") is None  # unlimited
    _write(v1 / "cpu" / "cpu.cfs_quota_us", "250000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "missing") == 3
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
        monkeypatch.setattr("vitssl.devices.cgroup_cpu_limit", lambda: 3)
        assert usable_cores() == 3


def test_torch_threads_fit_the_ranks_share_unless_omp_num_threads_is_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        assert fit_cpu_threads(cores=2) == 4  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert fit_cpu_threads(cores=6, ranks=2) == 3  # 3 cores per rank
        assert fit_cpu_threads(cores=1) == 1
        assert fit_cpu_threads(cores=8) == 1  # never raised above what is set
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [-1, "many", 2.5, True])
def test_invalid_num_workers_is_one_line(tmp_path, capsys, value):
    from vitssl.cli import main

    with pytest.raises(VitsslError, match="data.num_workers must be 'auto' or a whole number"):
        resolve_num_workers(value, in_memory=False, cores=2)
    code = main(["pretrain", "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--set", f"data.num_workers={json.dumps(value)}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: data.num_workers must be >= 0 or 'auto'")


def test_config_default_is_auto_and_counts_still_parse():
    assert load_config().data.num_workers == "auto"
    assert load_config(overrides=["data.num_workers=3"]).data.num_workers == 3
    assert load_config(overrides=["data.num_workers=auto"]).data.num_workers == "auto"


def test_loader_options_pin_only_when_asked_and_workers_persist():
    assert loader_options(0) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(0, pin_memory=True)["pin_memory"] is True
    one, four = loader_options(1), loader_options(4)
    assert one["persistent_workers"] and one["prefetch_factor"] == 4
    assert four["persistent_workers"] and four["prefetch_factor"] == 2


# -- workers change nothing but speed -------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _tree(root, corrupt=False):
    """Grey and RGB PNGs, small (decoded in full) and large (reduced), and JPEGs."""
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(4):
            grey = rng.integers(0, 256, (24, 20), dtype=np.uint8)
            Image.fromarray(grey).save(folder / f"small{i}.png")
            big = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
            Image.fromarray(big).save(folder / f"big{i}.png")
            Image.fromarray(big).save(folder / f"big{i}.jpg", quality=90)
    if corrupt:
        (root / "class0" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        whole = _png_bytes(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
        (root / "class1" / "truncated.png").write_bytes(whole[:len(whole) // 2])


def _all(spec, workers, steps=5, batch=6, **data):
    stream = pretrain_batches(DataConfig(spec=spec, num_workers=workers, **data),
                              image_size=16, batch_size=batch, seed=1, num_steps=steps)
    return list(stream), stream


def test_batches_are_identical_with_0_and_2_workers_and_skips_log_in_the_main_process(
        tmp_path, caplog):
    _tree(tmp_path, corrupt=True)
    spec = f"folder:{tmp_path}"
    main, main_stream = _all(spec, 0, steps=2, batch=13)
    caplog.clear()
    two, two_stream = _all(spec, 2, steps=2, batch=13)
    assert two_stream.num_workers == 2 and main_stream.num_workers == 0
    for a, b in zip(main, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # One epoch of 26 files in 2 x 13: both broken files were met and replaced.
    assert main_stream.skipped == two_stream.skipped == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "garbage.png" in messages and "truncated.png" in messages  # logged from workers' batches


def test_workers_start_once_for_every_epoch_and_every_pass(tmp_path):
    class WhoReads(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, index):
            return torch.zeros(3, 4, 4, dtype=torch.uint8), os.getpid()

    transform = pretrain_transform(8, augment=False, as_uint8=True)
    steps = StepBatches(WhoReads(), transform, batch_size=2, seed=0, mean=(0.5,) * 3,
                        std=(0.5,) * 3, num_steps=10)  # 4 epochs of 5 samples
    batches = PretrainBatches(steps, 0, 2, labelled=False)
    first = [pid for batch in batches for pid in batch["label"].tolist()]
    again = [pid for batch in batches for pid in batch["label"].tolist()]
    assert len(first) == len(again) == 20
    assert len(set(first)) == 2 and set(again) == set(first) and os.getpid() not in first


def _losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads,
                                                (run / "metrics.jsonl").read_text().splitlines())]


def _pretrain(out, workers, resume=False):
    from vitssl.train.run import pretrain

    sets = {"model.depth": 1, "model.image_size": 16, "train.steps": 4, "train.batch_size": 6,
            "train.checkpoint_every": 2, "train.log_every": 1, "train.warmup_steps": 1,
            "summary_eval.enabled": False, "data.num_workers": workers,
            "data.spec": f"folder:{out.parent / 'images'}", "train.device": "cpu"}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()] + [f"out={out}"])
    return pretrain(cfg, resume=resume)


def test_resume_is_exact_across_a_change_of_workers(tmp_path, capsys):
    _tree(tmp_path / "images")
    main, two = tmp_path / "main", tmp_path / "two"
    _pretrain(main, 0)
    _pretrain(two, 2)
    assert "data: 2 loader workers (data.num_workers=2)" in capsys.readouterr().err
    assert _losses(two) == _losses(main) and len(_losses(main)) == 4  # bit for bit
    shutil.rmtree(two / "checkpoints" / "step-00000004")  # as if killed after step 2
    _pretrain(two, 0, resume=True)
    err = capsys.readouterr().err
    assert "resuming from step-00000002" in err
    assert err.count("data: loaded in the main process (data.num_workers=0)") == 1
    assert _losses(two) == _losses(main)
    a, b = (load_file(str(run / "checkpoints" / "step-00000004" / "model.safetensors"))
            for run in (main, two))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_resumed_with_auto_keeps_its_saved_worker_count(tmp_path, monkeypatch):
    from webdataset import TarWriter

    from vitssl.data import pipeline

    rng = np.random.default_rng(0)
    for s in range(4):
        with open(tmp_path / f"s-{s}.tar", "wb") as fh, TarWriter(fh, encoder=False) as tar:
            for i in range(6):
                png = _png_bytes(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
                tar.write({"__key__": f"{s}-{i}", "png": png, "cls": str(6 * s + i).encode()})
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)  # auto would give 1 worker
    kw = dict(image_size=8, batch_size=3, seed=0, num_steps=6)
    cfg = DataConfig(spec=f"wds:{tmp_path}/s-{{0..3}}.tar", num_workers=2,
                     options={"shuffle_buffer": 4})
    whole = pretrain_batches(cfg, **kw)
    labels = []
    for batch in whole:
        labels.append(batch["label"].tolist())
        if len(labels) == 2:
            saved = {"world_size": 1, "ranks": [copy.deepcopy(whole.stream_state())]}
    resumed = pretrain_batches(dataclasses.replace(cfg, num_workers="auto"), start_step=2,
                               stream_state=saved, **kw)
    assert resumed.num_workers == 2 and resumed.resume_note is None
    assert [b["label"].tolist() for b in resumed] == labels[2:]


# -- decoding only what the crop needs -------------------------------------------------------


def _file(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _smooth(height, width, channels):
    """Ramps and a slow wave: a misplaced crop box shows as a large difference."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 23 + y / 31)]
    return np.stack(planes[:channels], -1).squeeze().round().astype(np.uint8)


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (1, "L")])
def test_jpeg_draft_decodes_at_the_reduced_size_in_its_mode(channels, mode):
    jpeg = _file(_smooth(360, 480, channels), "JPEG")
    assert EncodedImage(jpeg, "x.jpg").size == (480, 360)  # from the header alone
    pixels, divisor = EncodedImage(jpeg, "x.jpg").decode(reduce=5)  # DCT scale <= 5: 1/4
    assert (pixels.size, pixels.mode, divisor) == ((120, 90), mode, 4)
    pixels, divisor = EncodedImage(jpeg, "x.jpg").decode()
    assert (pixels.size, pixels.mode, divisor) == ((480, 360), mode, 1)
    png = _file(_smooth(360, 480, channels), "PNG")
    pixels, divisor = EncodedImage(png, "x.png").decode(reduce=4)
    assert (pixels.size, pixels.mode, divisor) == ((480, 360), mode, 1)  # no draft for PNG
    deep = _file(_smooth(40, 40, 1).astype(np.uint16) * 257, "PNG")
    assert EncodedImage(deep, "x.png").decode()[0].mode == "L"  # 16-bit grey to 8, one channel


def _from_file_and_image(transform, data: bytes, seed: int):
    """The transform of a file, then of the same file decoded: (output, RNG state after) each."""
    out = []
    for image in (EncodedImage(data, "x"), decode_image(data, "x")):
        torch.manual_seed(seed)
        out.append((transform(image), torch.get_rng_state()))
    return out


@pytest.mark.parametrize("shape", [(30, 40, 3), (30, 40)])
def test_small_crops_from_files_match_the_decoded_path_bit_for_bit(shape):
    data = _file(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), "PNG")
    transform = pretrain_transform(16, translate=0.1, as_uint8=True)
    assert isinstance(transform, PretrainTransform)
    for seed in range(8):  # crops of at most 30 x 40 to 16 px: under REDUCE_FROM, in full
        (from_file, file_rng), (from_image, image_rng) = _from_file_and_image(transform, data,
                                                                              seed)
        assert from_file.shape == (3, 16, 16) and from_file.dtype == torch.uint8
        assert torch.equal(from_file, from_image) and torch.equal(file_rng, image_rng)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_crops_are_reduced_with_the_same_geometry(fmt):
    data = _file(_smooth(360, 480, 3), fmt)
    transform = pretrain_transform(16, as_uint8=True)
    for seed in range(8):
        torch.manual_seed(seed)
        box = transform.crop.make_params([EncodedImage(data, "x").header])
        assert min(box["width"], box["height"]) >= REDUCE_FROM * 16  # the reduced path
        (from_file, file_rng), (from_image, image_rng) = _from_file_and_image(transform, data,
                                                                              seed)
        assert torch.equal(file_rng, image_rng)  # the flip drew the same
        diff = (from_file.float() - from_image.float()).abs()
        assert diff.mean() < 1.2 and diff.max() < 16, (seed, diff.mean(), diff.max())


def test_folder_pngs_and_jpegs_go_through_the_file_path(tmp_path, monkeypatch):
    _tree(tmp_path)
    names = []
    original = PretrainTransform.crop_file
    monkeypatch.setattr(PretrainTransform, "crop_file",
                        lambda self, encoded: names.append(encoded.name) or original(self, encoded))
    batches, _ = _all(f"folder:{tmp_path}", 0, steps=1, batch=24)
    assert batches[0]["image"].shape == (24, 3, 16, 16) and len(names) == 24
    assert {name.rsplit(".", 1)[1] for name in names} == {"png", "jpg"}
    assert load_image(names[0]).mode == "RGB"  # other readers still get RGB images
