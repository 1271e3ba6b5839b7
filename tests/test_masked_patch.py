"""The masked-patch objective: corruption statistics, exact targets, loss on corrupted only."""

from __future__ import annotations

import pytest
import torch
from vitssl_plugins.masked_patch import MaskedPatchPrediction, quantise_colour

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.ssl.batch import patchify


def _objective(image_size: int = 16, patch: int = 4, **options) -> MaskedPatchPrediction:
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name=f"Ti/{patch}", image_size=image_size, depth=1))
    return get_registry().get("objectives", "masked-patch")(encoder=encoder, **options)


def test_registered_through_the_entry_point():
    assert get_registry().get("objectives", "masked-patch") is MaskedPatchPrediction


@pytest.mark.parametrize("num_patches", [64, 7])
def test_corruption_statistics_over_many_draws(num_patches):
    obj = _objective()
    torch.manual_seed(1)
    draws = 4000
    plan = obj.draw(draws, num_patches, torch.device("cpu"))
    k = num_patches // 2
    assert (plan.corrupted.sum(1) == k).all()  # exactly floor(0.5 N) per image
    assert not (plan.masked & ~plan.corrupted).any() and not (plan.swapped & ~plan.corrupted).any()
    assert not (plan.masked & plan.swapped).any()
    total = draws * k
    masked, swapped = plan.masked.sum().item() / total, plan.swapped.sum().item() / total
    kept = 1 - masked - swapped
    # Binomial standard deviations are below 0.003 here; allow ~4 of them.
    assert abs(masked - 0.8) < 0.012 and abs(swapped - 0.1) < 0.012 and abs(kept - 0.1) < 0.012
    # Every position is corrupted about half the time.
    per_position = plan.corrupted.float().mean(0)
    assert (per_position - k / num_patches).abs().max() < 0.05
    # The swapped-in patch is another patch of the image, uniformly chosen.
    own = torch.arange(num_patches).expand(draws, -1)
    assert not (plan.other == own).any()
    assert plan.other.min() >= 0 and plan.other.max() < num_patches
    counts = torch.bincount((plan.other - own)[:, 0] % num_patches, minlength=num_patches)
    assert counts[0] == 0
    assert (counts[1:].float() / draws - 1 / (num_patches - 1)).abs().max() < 0.02


def test_other_split_and_ratio_options():
    obj = _objective(corrupt_ratio=0.25, mask_prob=0.5, random_prob=0.5)
    torch.manual_seed(2)
    plan = obj.draw(2000, 16, torch.device("cpu"))
    assert (plan.corrupted.sum(1) == 4).all()
    assert (plan.masked | plan.swapped)[plan.corrupted].all()  # nothing left unchanged
    assert abs(plan.masked[plan.corrupted].float().mean().item() - 0.5) < 0.02


def test_corrupt_replaces_with_mask_token_or_another_patch():
    obj = _objective()
    torch.manual_seed(3)
    tokens = torch.randn(50, 16, obj.encoder.embed_dim)
    plan = obj.draw(50, 16, torch.device("cpu"))
    out = obj.corrupt(tokens, plan)
    mask = obj.mask_token.detach()[0, 0]
    for b in range(50):
        for n in range(16):
            if plan.masked[b, n]:
                expected = mask
            elif plan.swapped[b, n]:
                expected = tokens[b, plan.other[b, n]]
            else:
                expected = tokens[b, n]
            torch.testing.assert_close(out[b, n], expected, rtol=0, atol=0)


def test_sample_seeds_make_draws_independent_of_batch_composition():
    obj = _objective()
    a = obj.draw(3, 16, torch.device("cpu"), [11, 22, 33])
    b = obj.draw(2, 16, torch.device("cpu"), [33, 11])
    assert torch.equal(a.corrupted[[2, 0]], b.corrupted)
    assert torch.equal(a.masked[[2, 0]], b.masked) and torch.equal(a.other[[2, 0]], b.other)


def test_mean_colour_targets_for_hand_made_patches():
    obj = _objective(image_size=8, patch=4)
    pixels = torch.zeros(1, 3, 8, 8)
    # patch 0 (top-left): constant colour (0.0, 0.5, 0.99) -> levels (0, 4, 7)
    pixels[0, :, :4, :4] = torch.tensor([0.0, 0.5, 0.99]).view(3, 1, 1)
    # patch 1 (top-right): red half 0.2 / half 0.4 -> mean 0.3 -> level 2; green 1.0 -> 7
    pixels[0, 0, :4, 4:6], pixels[0, 0, :4, 6:] = 0.2, 0.4
    pixels[0, 1, :4, 4:] = 1.0
    # patch 2 (bottom-left): blue has one pixel at 1.0, rest 0 -> mean 1/16 -> level 0
    pixels[0, 2, 4, 0] = 1.0
    # patch 3 (bottom-right): all channels 0.126 -> level 1 (0.126 * 8 = 1.008)
    pixels[0, :, 4:, 4:] = 0.126
    batch = {"image": pixels, "pixels": pixels}
    target = obj.targets(batch, (2, 2))
    expected = [0 * 64 + 4 * 8 + 7, 2 * 64 + 7 * 8 + 0, 0, 1 * 64 + 1 * 8 + 1]
    assert target.tolist() == [expected]


def test_downsampled_and_pixel_targets():
    obj = _objective(image_size=16, patch=8, target="downsampled-4x4")
    pixels = torch.zeros(1, 3, 8, 8)
    pixels[0, 0, 0:2, 2:4] = 0.9  # cell (row 0, col 1) red -> level 7
    pixels[0, 1, 6:8, 6:8] = 0.5  # cell (3, 3) green -> level 4
    pixels[0, 2, 0, 0] = 1.0  # cell (0, 0) blue mean 0.25 -> level 2
    target = obj.targets({"image": pixels, "pixels": pixels}, (1, 1))
    expected = torch.zeros(16, dtype=torch.long)
    expected[1], expected[15], expected[0] = 7 * 64, 4 * 8, 2
    assert target.shape == (1, 1, 16) and torch.equal(target[0, 0], expected)

    obj = _objective(image_size=8, patch=4, target="pixels")
    image = torch.arange(3 * 64, dtype=torch.float32).view(1, 3, 8, 8)
    target = obj.targets({"image": image}, (2, 2))
    assert target.shape == (1, 4, 48)
    torch.testing.assert_close(target[0, 3], image[0, :, 4:, 4:].reshape(-1))
    assert patchify(image, (2, 2)).shape == (1, 4, 3, 4, 4)


def test_quantise_colour_bits():
    values = torch.tensor([[0.0, 0.49, 1.0], [0.51, 0.5, 0.25]])
    assert quantise_colour(values, bits=1).tolist() == [0 * 4 + 0 * 2 + 1, 1 * 4 + 1 * 2 + 0]


@pytest.mark.parametrize("target", ["mean-color", "downsampled-4x4", "pixels"])
def test_uncorrupted_positions_carry_no_loss(target):
    obj = _objective(target=target)
    torch.manual_seed(4)
    pixels = torch.rand(3, 3, 16, 16)
    seeds = torch.tensor([5, 6, 7])
    batch = {"image": (pixels - 0.5) / 0.25, "pixels": pixels, "sample_seed": seeds}
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["out"] = output

    handle = obj.encoder.norm.register_forward_hook(keep)
    out = obj(batch)
    handle.remove()
    out["loss"].backward()
    grad = captured["out"].grad[:, obj.encoder.num_prefix_tokens:]  # (B, N, D)
    plan = obj.draw(3, 16, torch.device("cpu"), seeds.tolist())
    assert plan.corrupted.sum() == 3 * 8
    assert (grad[~plan.corrupted] == 0).all()
    assert (grad[plan.corrupted].abs().sum(-1) > 0).all()
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert ("accuracy" in out) == (target != "pixels")


def test_bad_options_are_user_errors():
    encoder = build_encoder(ModelConfig(image_size=16, depth=1))
    with pytest.raises(VitsslError, match="target"):
        MaskedPatchPrediction(encoder, target="colour")
    with pytest.raises(VitsslError, match="corrupt_ratio"):
        MaskedPatchPrediction(encoder, corrupt_ratio=0.0)
    with pytest.raises(VitsslError, match="mask_prob"):
        MaskedPatchPrediction(encoder, mask_prob=0.9, random_prob=0.2)


def test_grids_and_patches_the_objective_cannot_use_are_refused():
    with pytest.raises(VitsslError, match="corrupts nothing"):
        _objective(image_size=16, patch=16)  # one patch: floor(0.5 * 1) = 0
    with pytest.raises(VitsslError, match="multiple of 4"):
        _objective(image_size=16, patch=2, target="downsampled-4x4")
