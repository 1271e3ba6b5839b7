"""Images beyond 8-bit RGB: 16-bit PNG, 6-band TIFF and ``.npy`` data, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vitssl.cli import main as cli_main
from vitssl.config import DataConfig, ModelConfig, config_from_dict, load_config
from vitssl.data import channels as channels_module
from vitssl.data.channels import resolve_channels
from vitssl.data.decode import decode_image, to_8bit
from vitssl.data.source import open_dataset
from vitssl.data.tasks import run_task
from vitssl.errors import VitsslError
from vitssl.train.build import resolve_run_config
from vitssl.train.checkpoint import load_encoder
from vitssl.train.run import pretrain


def _supervised(data: str, out, *extra: str):
    return load_config(None, [f"out={out}", "objective.name=supervised", f"data.spec={data}",
                              "train.steps=25", "train.batch_size=12", "train.warmup_steps=2",
                              "model.depth=1", "model.image_size=16", "train.device=cpu",
                              "train.log_every=1", "summary_eval.enabled=false",
                              "data.num_workers=0", *extra])


def _accuracy(run) -> float:
    """Training top-1 over the last 5 steps (on batches before each update)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return float(np.mean([json.loads(line)["top1"] for line in lines[-5:]]))


@pytest.fixture(scope="module")
def band_run(six_bands, tmp_path_factory):
    """A short supervised run on every band of the 6-band TIFFs."""
    run = tmp_path_factory.mktemp("bands") / "run"
    pretrain(_supervised(f"folder:{six_bands / 'tiff'}", run))
    return run


def test_16_bit_pngs_whose_class_lives_in_the_low_bits_are_learned(tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = []
    for label in range(2):
        folder = tmp_path / "pngs" / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(12):
            low = rng.integers(0, 64, (16, 16)) + 192 * label  # the high byte is 128 always
            Image.fromarray((128 * 256 + low).astype(np.uint16)).save(folder / f"{i}.png")
            files.append(folder / f"{i}.png")
    # Read as 8-bit, every image of both classes is the same flat picture: nothing to learn.
    eight = {np.asarray(to_8bit(Image.open(f))).tobytes() for f in files}
    assert len(eight) == 1
    run = tmp_path / "run"
    pretrain(_supervised(f"folder:{tmp_path / 'pngs'}", run))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["in_chans"] == 1 and len(saved["data"]["mean"]) == 1
    assert _accuracy(run) >= 0.9
    capsys.readouterr()


def test_six_bands_are_learned_with_their_statistics_recorded(six_bands, band_run):
    saved = yaml.safe_load((band_run / "config.yaml").read_text())
    assert saved["model"]["in_chans"] == 6 and saved["data"]["color"] is False
    stored = np.stack([np.load(p) for p in sorted((six_bands / "npy").rglob("*.npy"))])
    expected = (stored / 65535.0).mean(axis=(0, 2, 3))  # every image, every pixel
    np.testing.assert_allclose(saved["data"]["mean"], expected, atol=0.01)
    assert _accuracy(band_run) >= 0.9


@pytest.mark.slow
def test_three_of_the_six_bands_cannot_learn_it(six_bands, tmp_path, capsys):
    three = tmp_path / "three"
    pretrain(_supervised(f"folder:{six_bands / 'tiff'}", three, "data.channels=[0,1,2]"))
    assert yaml.safe_load((three / "config.yaml").read_text())["model"]["in_chans"] == 3
    assert _accuracy(three) <= 0.75
    capsys.readouterr()


def test_npy_and_tiff_decode_to_the_same_bands(six_bands):
    tiff, npy = open_dataset(f"folder:{six_bands / 'tiff'}"), open_dataset(
        f"folder:{six_bands / 'npy'}")
    assert len(tiff) == len(npy) == 24
    for i in (0, 13):
        (a, la), (b, lb) = tiff[i], npy[i]
        assert a.shape == (6, 16, 16) and la == lb
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        stored = np.load(npy.samples[i][0])
        np.testing.assert_allclose(b.numpy(), stored / 65535.0, rtol=1e-6)
    hwc = np.load(npy.samples[0][0]).transpose(1, 2, 0)  # (16, 16, 6): detected as well
    data = _npy_bytes(hwc)
    np.testing.assert_array_equal(decode_image(data, "x.npy").numpy(), npy[0][0].numpy())


def test_export_resume_and_eval_use_the_recorded_channels(band_run, six_bands, tmp_path,
                                                         monkeypatch, capsys):
    timm = pytest.importorskip("timm")
    saved = yaml.safe_load((band_run / "config.yaml").read_text())
    assert cli_main(["export", str(band_run), "--format", "timm", "--out",
                     str(tmp_path / "timm")]) == 0
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 6
    assert config["pretrained_cfg"]["mean"] == saved["data"]["mean"]
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    encoder, cfg = load_encoder(band_run)
    images = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images),
                                   encoder.forward_features(images), atol=1e-5, rtol=0)

    def no_estimate(*args, **kwargs):
        raise AssertionError("the recorded statistics must be used")

    monkeypatch.setattr(channels_module, "estimate_statistics", no_estimate)
    resumed = resolve_run_config(load_config(band_run / "config.yaml"))
    assert list(resumed.data.mean) == saved["data"]["mean"] and resumed.model.in_chans == 6
    for split in ("train", "test"):  # a tree with both splits, for evaluation
        (tmp_path / "split").mkdir(exist_ok=True)
        (tmp_path / "split" / split).symlink_to(six_bands / "tiff", target_is_directory=True)
    task = run_task(f"folder:{tmp_path / 'split'}", 16, cfg.data, encoder.in_chans)
    raw = open_dataset(f"folder:{six_bands / 'tiff'}")[0][0]
    mean, std = torch.tensor(saved["data"]["mean"]), torch.tensor(saved["data"]["std"])
    torch.testing.assert_close(task.train[0][0], (raw - mean[:, None, None]) / std[:, None, None])
    with pytest.raises(VitsslError, match="gives 3-channel images, but the encoder takes 6"):
        run_task("builtin:digits", 16, cfg.data.__class__(), 6)
    capsys.readouterr()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_bad_input_is_one_line(six_bands, tmp_path, capsys):
    tiff = f"folder:{six_bands / 'tiff'}"
    mixed = tmp_path / "mixed" / "c0"
    mixed.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(mixed / "a.png")
    (mixed / "b.tif").write_bytes((six_bands / "tiff" / "c0" / "0.tif").read_bytes())
    dataset = open_dataset(f"folder:{tmp_path / 'mixed'}")
    dataset[0]
    with pytest.raises(VitsslError, match=r"b\.tif has 6 channels, but .*a\.png has 3"):
        dataset[1]
    with pytest.raises(VitsslError, match=r"cannot tell which axis of x\.npy \(shape \(8, 8, 8\)\)"
                                          r".*data\.options\.layout=chw or hwc"):
        decode_image(_npy_bytes(np.zeros((8, 8, 8), np.uint16)), "x.npy")
    with pytest.raises(VitsslError, match="data.channels names band 7, but .* has 6 .0 to 5."):
        resolve_channels(ModelConfig(), DataConfig(spec=tiff, channels=(0, 7)))
    with pytest.raises(VitsslError, match="model.in_chans=3 but .* gives 6 channels"):
        resolve_channels(ModelConfig(in_chans=3), DataConfig(spec=tiff))
    code = cli_main(["pretrain", "--objective", "mae", "--data", f"folder:{tmp_path / 'mixed'}",
                     "--steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "has 6 channels, but" in err[-1] and "Traceback" not in "".join(err)


def test_a_run_saved_before_channels_loads_as_rgb_with_its_numbers(monkeypatch):
    saved = {"model": {"name": "Ti/4"}, "data": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1],
                                                 "color": False}}
    cfg = config_from_dict(saved)
    assert cfg.model.in_chans == 3 and cfg.data.channels is None
    monkeypatch.setattr(channels_module, "data_format", lambda data: 1 / 0)  # nothing read
    model, data = resolve_channels(cfg.model, cfg.data)
    assert model.in_chans == 3 and data.mean == (0.1, 0.2, 0.3)
    assert load_config().model.in_chans == "auto"  # recipes take the data's


def test_shards_keep_the_bands_and_their_depth(six_bands, tmp_path, capsys):
    from vitssl.data.source import get_source
    from vitssl.data.wds import decode_sample, first_sample

    shard = tmp_path / "shard-000000.tar"
    assert cli_main(["shard", "--data", f"folder:{six_bands / 'tiff'}", "--output",
                     str(tmp_path / "shard-%06d.tar")]) == 0
    fmt = get_source("wds").image_format(str(shard), "train", {})
    assert (fmt.channels, fmt.bits, fmt.color) == (6, 16, False)
    image, label = decode_sample(first_sample([str(shard)]), labelled=True)
    first, first_label = open_dataset(f"folder:{six_bands / 'tiff'}")[0]
    assert label == first_label
    np.testing.assert_array_equal(image.numpy(), first.numpy())
    capsys.readouterr()
    # a stream has no labelled split and digits do not fit a 6-band encoder: the run still
    # ends with its summary, which says there was nothing to score on
    run = tmp_path / "run"
    pretrain(load_config(None, [f"out={run}", "objective.name=mae", f"data.spec=wds:{shard}",
                                "train.steps=2", "train.batch_size=8", "model.depth=1",
                                "model.image_size=16", "train.device=cpu",
                                "data.num_workers=0"]))
    assert json.loads((run / "summary.json").read_text())["evaluation"] == {"data": None}
    assert "set summary_eval.data" in capsys.readouterr().err


def test_analysis_figures_draw_six_bands(tmp_path):
    from vitssl.analyze import figures
    from vitssl.analyze.filters import filter_components

    components, ratio = filter_components(torch.randn(192, 6, 4, 4))
    assert components.shape == (28, 6, 4, 4)
    figures.draw_filters(components, ratio, tmp_path)
    figures.draw_rollout(torch.rand(2, 6, 16, 16), torch.rand(2, 4, 4), tmp_path, "rollout")
    assert (tmp_path / "filters.png").stat().st_size and (tmp_path / "rollout.png").stat().st_size
