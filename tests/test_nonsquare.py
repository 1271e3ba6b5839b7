"""Non-square pretraining: ``model.image_size: [H, W]`` through crops, encoder and targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from vitssl.config import ModelConfig, load_config
from vitssl.data.tasks import load_task
from vitssl.data.transforms import eval_transform, pretrain_transform
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.train.checkpoint import load_encoder
from vitssl.train.run import pretrain


def _cfg(out, objective: str, *sets: str):
    base = ["model.depth=1", "model.image_size=[16, 24]", "train.steps=2",
            "train.batch_size=4", "train.checkpoint_every=2", "summary_eval.enabled=false",
            f"objective.name={objective}", f"out={out}"]
    return load_config(None, base + list(sets))


def test_image_size_accepts_height_width_and_refuses_bad_values():
    assert load_config(None, ["model.image_size=[16, 24]"]).model.image_size == (16, 24)
    assert load_config(None, ["model.image_size=24"]).model.image_size == 24
    with pytest.raises(VitsslError, match="model.image_size"):
        load_config(None, ["model.image_size=[16, 24, 8]"])
    with pytest.raises(VitsslError, match=r"model.image_size must be >= 1"):
        load_config(None, ["model.image_size=[0, 16]"])
    with pytest.raises(VitsslError, match=r"\[height, width\] of positive ints"):
        build_encoder(dataclasses.replace(ModelConfig(), image_size=(0, 16)))


def test_crops_follow_height_and_width():
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8))
    assert pretrain_transform((16, 24))(image).shape == (3, 16, 24)
    assert pretrain_transform((16, 24), augment=False)(image).shape == (3, 16, 24)
    assert eval_transform((24, 16))(image).shape == (3, 24, 16)
    # A square size keeps the square crop's aspect range.
    crop = pretrain_transform(16).crop
    assert tuple(crop.ratio) == pytest.approx((3 / 4, 4 / 3))
    wide = pretrain_transform((16, 32)).crop
    assert tuple(wide.ratio) == pytest.approx((3 / 2, 8 / 3))


@pytest.mark.parametrize("objective, options", [
    ("masked-patch", ["objective.options.target=pixels"]),
    ("mae", []),
    ("data2vec2", []),
])
def test_pretrain_at_height_width_and_evaluate_at_another_size(tmp_path, objective, options):
    pretrain(_cfg(tmp_path, objective, *options))
    encoder, cfg = load_encoder(tmp_path)
    assert cfg.model.image_size == (16, 24)
    assert encoder.grid_size == (4, 6) and encoder.pos_embed.shape[1] == 1 + 4 * 6
    with torch.no_grad():
        native = encoder.forward_features(torch.randn(2, 3, 16, 24))
        square = encoder.forward_features(torch.randn(2, 3, 32, 32))
    assert native.shape[1] == 1 + 24 and square.shape[1] == 1 + 64
    task = load_task("builtin:digits", image_size=32)
    image, _ = task.train[0]
    assert encoder(image[None]).shape == (1, encoder.embed_dim)


def test_targets_follow_a_non_square_grid():
    from vitssl_plugins.mae import MaskedAutoencoder
    from vitssl_plugins.masked_patch import MaskedPatchPrediction

    encoder = build_encoder(load_config(None, ["model.image_size=[16, 24]",
                                               "model.depth=1"]).model)
    images = torch.randn(2, 3, 16, 24)
    mae = MaskedAutoencoder(encoder, norm_pix_loss=False)
    target = mae.targets(images, (4, 6))
    assert target.shape == (2, 24, 3 * 4 * 4)
    # Row-major patches: entry 5 is the top-right 4x4 patch, entry 6 starts row two.
    assert torch.equal(target[:, 5], images[:, :, 0:4, 20:24].flatten(1))
    assert torch.equal(target[:, 6], images[:, :, 4:8, 0:4].flatten(1))
    masked = MaskedPatchPrediction(encoder, target="pixels")
    assert masked.head.out_features == 3 * 4 * 4
    out = masked({"image": images, "pixels": images})
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("objective", ["dino", "moco-v3", "ibot"])
def test_multi_view_objectives_refuse_a_non_square_size_in_one_line(tmp_path, objective):
    with pytest.raises(VitsslError, match=f"{objective} makes square crops, not the "
                                          f"non-square model.image_size") as exc:
        pretrain(_cfg(tmp_path, objective))
    assert "\n" not in str(exc.value)
