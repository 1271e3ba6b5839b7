"""Objective views: deterministic multi-crop batches, per rank, with the declared shapes."""

from __future__ import annotations

import torch

from vitssl.config import DataConfig
from vitssl.data.pipeline import pretrain_batches
from vitssl.ssl.views import MultiCrop


def _batches(views, *, rank: int = 0, world_size: int = 1, workers: int = 0, seed: int = 1):
    cfg = DataConfig(spec="builtin:digits", num_workers=workers)
    return list(pretrain_batches(cfg, image_size=16, batch_size=4, seed=seed, num_steps=2,
                                 rank=rank, world_size=world_size, views=views))


def _crop() -> MultiCrop:
    return MultiCrop(16, 8, num_local=3, hflip=False, color=True)


def test_views_have_the_declared_shapes_and_ranges():
    for batch in _batches(_crop()):
        assert batch["views"]["global"].shape == (4, 2, 3, 16, 16)
        assert batch["views"]["local"].shape == (4, 3, 3, 8, 8)
        pixels = batch["view_pixels"]["global"]
        assert pixels.dtype == torch.float32 and 0 <= pixels.min() and pixels.max() <= 1
        assert "image" not in batch and batch["label"].shape == (4,)
        # Two crops of one image are different draws.
        assert not torch.equal(pixels[:, 0], pixels[:, 1])


def test_views_repeat_for_the_same_step_and_seed_and_workers():
    first, again, workers = _batches(_crop()), _batches(_crop()), _batches(_crop(), workers=1)
    for a, b, c in zip(first, again, workers, strict=True):
        for name in a["views"]:
            assert torch.equal(a["views"][name], b["views"][name])
            assert torch.equal(a["views"][name], c["views"][name])
    other_seed = _batches(_crop(), seed=2)
    assert not torch.equal(first[0]["views"]["global"], other_seed[0]["views"]["global"])


def test_ranks_see_different_samples_with_the_views_of_one_process():
    rank0 = _batches(_crop(), rank=0, world_size=2)
    rank1 = _batches(_crop(), rank=1, world_size=2)
    cfg = DataConfig(spec="builtin:digits")
    single = list(pretrain_batches(cfg, image_size=16, batch_size=8, seed=1, num_steps=2,
                                   views=_crop()))
    for a, b, whole in zip(rank0, rank1, single, strict=True):
        assert not torch.equal(a["view_pixels"]["global"], b["view_pixels"]["global"])
        for name in whole["views"]:  # a sample's views do not depend on the world size
            torch.testing.assert_close(torch.cat([a["views"][name], b["views"][name]]),
                                       whole["views"][name], rtol=0, atol=0)


def test_multicrop_flip_and_colour_switches():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :2] = 255  # a bar on the left edge
    crop = MultiCrop(8, 4, num_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0),
                     hflip=False, color=False)
    torch.manual_seed(0)
    for _ in range(20):
        views = crop(image)["global"]
        assert views.shape == (2, 3, 8, 8)
        # Without flip the bar stays on the left; without colour it stays white on black.
        assert (views[:, :, :, 0] > 200).all() and (views[:, :, :, -1] < 50).all()
