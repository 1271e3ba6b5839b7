"""A run's channels and normalisation, from its data.

``model.in_chans: auto`` takes the channel count the data yields (the source's
:class:`~vitssl.data.bands.ImageFormat`, or ``len(data.channels)``); a number
must agree with it. Colour operations (``data.color``) stay only where three
channels of an 8-bit picture remain. ``data.mean/std: auto`` are estimated from
:data:`STATS_IMAGES` training images; unset, they are ImageNet's for 8-bit RGB
pictures and estimated otherwise. A run records the numbers in ``config.yaml``.
"""

from __future__ import annotations

import dataclasses

import torch

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ModelConfig
from vitssl.data.bands import ImageFormat
from vitssl.data.source import parse_spec
from vitssl.errors import VitsslError

# Images the statistics are estimated from: the per-channel mean of 256 images is within
# about 1/16 of the spread between images of the true mean, far finer than normalisation
# needs, and 256 small files read in seconds. Drawn with the run's seed.
STATS_IMAGES = 256
MIN_STD = 1e-6  # a constant band is centred, not divided by zero


def check_statistics(data: DataConfig) -> None:
    """Refuse a ``data.mean`` or ``data.std`` that is neither unset, ``auto`` nor numbers."""
    for key in ("mean", "std"):
        value = getattr(data, key)
        if value not in (None, "auto") and (isinstance(value, str) or not value or (
                key == "std" and min(value) <= 0)):
            raise VitsslError(f"data.{key} must be 'auto' or one number per channel"
                              f"{' (each > 0)' if key == 'std' else ''}, got {value!r}")


def data_format(data: DataConfig) -> ImageFormat:
    """What the run's training images hold, as its source declares."""
    spec = parse_spec(data.spec)
    return spec.source.image_format(spec.target, spec.split or data.split, data.options)


def channel_count(data: DataConfig, fmt: ImageFormat) -> int:
    """Channels the run's images have after ``data.channels``; a one-line error for a bad band."""
    if data.channels is None:
        return fmt.channels
    if not data.channels or any(type(i) is not int or i < 0 for i in data.channels):
        raise VitsslError(f"data.channels must list band indices >= 0, got {data.channels!r}")
    top = max(data.channels)
    if top >= fmt.channels:
        raise VitsslError(f"data.channels names band {top}, but {data.spec} has "
                          f"{fmt.channels} (0 to {fmt.channels - 1})")
    return len(data.channels)


def resolve_channels(model: ModelConfig, data: DataConfig,
                     seed: int = 0) -> tuple[ModelConfig, DataConfig]:
    """``model.in_chans``, ``data.color`` and ``data.mean/std`` filled in from the data."""
    check_statistics(data)  # in_chans' range: vitssl.config_values, checked before this
    recorded = isinstance(data.mean, (tuple, list)) and isinstance(data.std, (tuple, list))
    if recorded and model.in_chans != "auto" and data.color is not None:
        return model, data  # a run's own config.yaml: nothing to read
    fmt = data_format(data)
    count = channel_count(data, fmt)
    if model.in_chans not in ("auto", count):
        raise VitsslError(f"model.in_chans={model.in_chans} but {data.spec} gives {count} "
                          f"channels; set model.in_chans=auto, or data.channels to pick bands")
    picture = fmt.color and count == 3
    if data.color and not picture:
        raise VitsslError(f"data.color=true needs 3 channels of an RGB picture; {data.spec} "
                          f"gives {count} channels of {fmt.bits} bits")
    color = data.color if data.color is not None else (None if picture else False)
    model = dataclasses.replace(model, in_chans=count)
    data = dataclasses.replace(data, color=color)
    if recorded:
        return model, data
    mean, std = data.mean, data.std
    if mean is None and std is None and fmt.color and fmt.bits == 8:
        pick = data.channels or range(3)
        mean, std = tuple(IMAGENET_MEAN[i] for i in pick), tuple(IMAGENET_STD[i] for i in pick)
    if mean in (None, "auto") or std in (None, "auto"):
        est_mean, est_std = estimate_statistics(data, count, seed, model.image_size)
        mean = est_mean if mean in (None, "auto") else mean
        std = est_std if std in (None, "auto") else std
    return model, dataclasses.replace(data, mean=tuple(mean), std=tuple(std))


def estimate_statistics(data: DataConfig, channels: int, seed: int,
                        image_size: int | tuple[int, int],
                        images: int = STATS_IMAGES) -> tuple[tuple[float, ...], ...]:
    """Per-channel (mean, std) over the pixels of ``images`` training images drawn with
    ``seed``, unaugmented, resized to ``image_size`` as evaluation sees them."""
    from vitssl.data.pipeline import pretrain_batches

    plain = dataclasses.replace(data, mean=(0.0,) * channels, std=(1.0,) * channels,
                                augment=False, num_workers=0)
    batch = 64
    total = torch.zeros(channels, dtype=torch.float64)
    square = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for out in pretrain_batches(plain, image_size=image_size, batch_size=batch, seed=seed,
                                num_steps=-(-images // batch)):
        pixels = out["pixels"].double().transpose(0, 1).flatten(1)  # (C, B H W)
        total += pixels.sum(1)
        square += pixels.square().sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (square / count - mean.square()).clamp_min(0).sqrt().clamp_min(MIN_STD)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def describe_statistics(data: DataConfig, channels: int) -> str:
    """One line: the channel count and the normalisation a run uses."""
    mean = ", ".join(f"{v:.4g}" for v in data.mean)
    std = ", ".join(f"{v:.4g}" for v in data.std)
    return (f"data: {channels} channel{'s' if channels != 1 else ''}; mean [{mean}], "
            f"std [{std}] (estimated from a seeded sample of {STATS_IMAGES} training images, "
            f"recorded in config.yaml)")
