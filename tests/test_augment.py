"""Built-in datasets' own augmentation keeps their labels true; explicit values win."""

from __future__ import annotations

import pytest
import torch

from vitssl.config import DataConfig, load_config
from vitssl.data.source import IMAGENET_STYLE, dataset_augmentation, resolve_augmentation
from vitssl.data.transforms import pretrain_transform


def _transform(spec: str, size: int = 32):
    data = resolve_augmentation(DataConfig(spec=spec))
    return pretrain_transform(size, data.crop_scale, data.hflip, data.augment, data.crop_ratio,
                              data.translate)


def _coordinates(size: int = 64) -> torch.Tensor:
    """Channel 0 = column, channel 1 = row (0..252), channel 2 = a left-half marker."""
    ramp = torch.arange(size) * (252 // (size - 1))
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[0] = ramp.view(1, -1).to(torch.uint8)
    image[1] = ramp.view(-1, 1).to(torch.uint8)
    image[2, :, : size // 2] = 255
    return image


@pytest.mark.parametrize("spec", ["builtin:digits", "builtin:dsprites-ori", "builtin:dsprites-loc"])
def test_no_flip_for_labels_a_mirror_would_change(spec):
    transform = _transform(spec)
    torch.manual_seed(0)
    for _ in range(200):
        marker = transform(_coordinates())[2]
        # The left-half marker stays on the left: never mirrored.
        assert marker[:, :8].mean() > marker[:, -8:].mean()


@pytest.mark.parametrize("spec", ["builtin:dsprites-ori", "builtin:photos"])
def test_crops_never_drop_below_the_declared_scale(spec):
    lo = resolve_augmentation(DataConfig(spec=spec)).crop_scale[0]
    transform = _transform(spec, size=64)
    torch.manual_seed(1)
    smallest = 1.0
    for _ in range(300):
        out = transform(_coordinates()) * 255 / 252  # column / row fraction
        width = out[0].max() - out[0].min()
        height = out[1].max() - out[1].min()
        smallest = min(smallest, float(width * height))
    assert smallest >= lo * 0.9  # one pixel of slack at the crop border
    assert smallest < lo + 0.2  # and the crops do vary down towards it


@pytest.mark.parametrize("spec", ["builtin:dsprites-loc", "builtin:digits"])
def test_position_and_shape_labels_are_not_augmented(spec):
    image = _coordinates()
    plain = pretrain_transform(32, augment=False)(image)
    torch.manual_seed(0)
    for _ in range(5):
        assert torch.equal(_transform(spec)(image), plain)


def test_shifts_stay_within_the_declared_fraction():
    transform = pretrain_transform(64, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                   hflip=False, translate=0.125)
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    largest = 0
    for _ in range(50):
        covered = transform(white)[0] > 0.5  # uncovered pixels are black
        blank_columns = 64 - int(covered.any(dim=0).sum())
        blank_rows = 64 - int(covered.any(dim=1).sum())
        assert blank_columns <= 8 and blank_rows <= 8  # at most 1/8 of the side
        largest = max(largest, blank_columns, blank_rows)
    assert largest > 0  # and it does shift


def test_explicit_values_win_and_other_data_gets_the_imagenet_recipe():
    data = resolve_augmentation(DataConfig(spec="builtin:dsprites-ori", hflip=True,
                                           crop_scale=(0.8, 1.0)))
    assert data.hflip is True and data.crop_scale == (0.8, 1.0)
    assert data.crop_ratio == (1.0, 1.0)  # the rest still from the dataset
    assert dataset_augmentation("folder:/data/images") == IMAGENET_STYLE
    assert dataset_augmentation("wds:/data/shard-{000..009}.tar") == IMAGENET_STYLE


def test_config_yaml_records_the_resolved_values(tmp_path):
    import yaml

    from vitssl.train.run import pretrain

    cfg = load_config(None, [f"out={tmp_path}", "train.steps=1", "train.batch_size=4",
                             "model.depth=1", "summary_eval.enabled=false"])
    pretrain(cfg)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]
    assert saved["hflip"] is False and saved["crop_scale"] == [1.0, 1.0]
    assert saved["translate"] == 0.0 and saved["augment"] is False
