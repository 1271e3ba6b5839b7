"""data2vec2: inverse block masks, targets against float64, one teacher pass, EMA, loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ema_check import train_and_check_ema
from vitssl_plugins.data2vec2 import (
    PAPER,
    Data2Vec2,
    annealed_momentum,
    block_side,
    regression_loss,
    run_scaled_start,
)

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.ssl.masking import inverse_block_draws, inverse_block_geometry, inverse_block_mask


def _d2v(depth: int = 2, size: int | tuple[int, int] = 16, **options) -> Data2Vec2:
    torch.manual_seed(0)
    return Data2Vec2(build_encoder(ModelConfig(image_size=size, depth=depth)), **options)


def _batch(b: int = 3, size: int | tuple[int, int] = 16, step: int = 0, total: int = 4,
           seeds=None) -> dict:
    h, w = (size, size) if isinstance(size, int) else size
    return {"image": torch.randn(b, 3, h, w), "step": step, "total_steps": total,
            "sample_seed": torch.arange(b) if seeds is None else torch.tensor(seeds)}


def _masks(grid, keep, block, n=40, seed=0) -> np.ndarray:
    noise = torch.rand(n, inverse_block_draws(grid, keep, block),
                       generator=torch.Generator().manual_seed(seed))
    ids = inverse_block_mask(noise, grid, keep, block)
    visible = np.zeros((n, grid[0] * grid[1]), dtype=bool)
    np.put_along_axis(visible, ids.numpy(), True, axis=1)
    assert (np.diff(ids.numpy(), axis=1) > 0).all()  # ascending, distinct
    return visible.reshape(n, *grid)


@pytest.mark.parametrize("grid,keep,block", [((7, 7), 9, 2), ((14, 14), 39, 3),
                                             ((5, 9), 9, 2), ((7, 7), 9, 3)])
def test_inverse_block_mask_keeps_exact_counts_in_whole_blocks(grid, keep, block):
    side, count = inverse_block_geometry(grid, keep, block)
    for visible in _masks(grid, keep, block):
        assert visible.sum() == keep
        # every visible patch touches another (8-neighbourhood): blocks, not scattered patches
        padded = np.pad(visible, 1)
        neighbours = sum(np.roll(np.roll(padded, dy, 0), dx, 1) for dy in (-1, 0, 1)
                         for dx in (-1, 0, 1) if (dy, dx) != (0, 0))[1:-1, 1:-1]
        assert (neighbours[visible] > 0).all()
        # at least one whole side × side block is visible
        windows = np.lib.stride_tricks.sliding_window_view(visible, (side, side))
        assert windows.all(axis=(-1, -2)).any()
    assert count * side ** 2 <= keep


def test_inverse_block_mask_is_a_function_of_the_draws_and_varies_with_them():
    a, b = _masks((7, 7), 9, 2, seed=1), _masks((7, 7), 9, 2, seed=1)
    assert (a == b).all() and not (a == _masks((7, 7), 9, 2, seed=2)).all()
    assert len({m.tobytes() for m in a}) > 30  # 40 draws, (nearly) all different


def test_masks_follow_the_sample_seed_not_the_batch_position():
    d2v = _d2v(clone_batch=3)
    one = d2v.visible(_batch(2, seeds=[7, 8]), (4, 4), torch.device("cpu"))
    other = d2v.visible(_batch(3, seeds=[9, 8, 7]), (4, 4), torch.device("cpu"))
    assert torch.equal(one[0], other[2]) and torch.equal(one[1], other[1])
    assert not torch.equal(one[0, 0], one[0, 1])  # clones differ


def test_block_side_scales_the_papers_geometry():
    assert [block_side(g) for g in [(14, 14), (7, 7), (4, 4), (5, 9), (28, 28)]] == \
        [3, 2, 1, 1, 6]


def _targets64(teacher, images, top_k) -> torch.Tensor:
    """The teacher run block by block in float64: MLP branch outputs of the top K blocks."""
    t = copy.deepcopy(teacher).double()
    x = t._pos_embed(t.embed_patches(images.double()))
    branches = []
    for block in t.blocks:
        x = x + block.attn(block.norm1(x))
        branch = block.mlp(block.norm2(x))
        x = x + branch
        branches.append(branch[:, t.num_prefix_tokens:])
    normed = []
    for f in branches[-top_k:]:
        mean, var = f.mean(dim=1, keepdim=True), f.var(dim=1, unbiased=False, keepdim=True)
        normed.append((f - mean) / (var + 1e-5).sqrt())
    y = sum(normed) / top_k
    mean, var = y.mean(dim=-1, keepdim=True), y.var(dim=-1, unbiased=False, keepdim=True)
    return (y - mean) / (var + 1e-5).sqrt()


def test_targets_match_a_float64_computation():
    d2v = _d2v(depth=3, top_k=2)
    for block in d2v.teacher.blocks:  # a teacher unlike its fresh initialisation
        torch.nn.init.normal_(block.mlp.fc2.weight, std=0.2)
    images = torch.randn(2, 3, 16, 16)
    got = d2v.targets(images, (4, 4))
    torch.testing.assert_close(got.double(), _targets64(d2v.teacher, images, 2),
                               atol=2e-4, rtol=0)
    assert not torch.allclose(got.double(), _targets64(d2v.teacher, images, 3), atol=1e-2)


@pytest.mark.parametrize("clones", [1, 4])
def test_the_teacher_runs_once_per_sample_whatever_the_clone_count(clones):
    d2v = _d2v(clone_batch=clones)
    seen = []
    d2v.teacher.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    students = []
    d2v.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: students.append(args[0]))
    out = d2v(_batch(3))
    assert seen == [3]
    (x,) = students
    assert x.shape[:2] == (3 * clones, 1 + 3)  # class token + int(16 x 0.2) visible patches
    assert set(out) >= {"loss", "loss_regression", "loss_cls"}
    torch.testing.assert_close(out["loss"],
                               out["loss_regression"] + d2v.cls_weight * out["loss_cls"])


def test_teacher_is_the_ema_of_the_student_and_not_trained():
    d2v = _d2v(momentum=0.9, end_momentum=0.99, anneal=0.5)

    def expected(step: int, steps: int) -> float:  # linear over the first half, then flat
        return 0.9 + (0.99 - 0.9) * min(1.0, step / (0.5 * steps))

    train_and_check_ema(d2v, [d2v.teacher], [d2v.encoder], lambda s, t: _batch(step=s, total=t),
                        base=0.0, steps=5, schedule=expected)


def test_run_scaled_momentum_keeps_the_update_mass():
    for steps in (200, 5000):
        d2v = _d2v(update_mass=13.0)
        mass = sum(1 - d2v.teacher_momentum(s, steps) for s in range(steps))
        assert mass == pytest.approx(13.0, rel=0.02)
    # the paper's schedule sums to about 13.3 over its 375,300 steps
    paper = sum(1 - annealed_momentum(0.9998, 0.99999, PAPER["anneal"], s, 375_300)
                for s in range(0, 375_300, 10)) * 10
    assert paper == pytest.approx(13.25, rel=0.01)
    assert run_scaled_start(10 ** 9, 13.0, 0.27, 0.05, cap=0.9998) == 0.9998


def test_predictions_at_visible_positions_do_not_change_the_loss():
    pred, target = torch.randn(2, 3, 16, 8), torch.randn(2, 1, 16, 8)
    masked = torch.rand(2, 3, 16) < 0.5
    loss = regression_loss(pred, target, masked, int(masked.sum()))
    changed = torch.where(masked[..., None], pred, pred + 100.0)
    assert regression_loss(changed, target, masked, int(masked.sum())) == loss
    want = ((pred - target) ** 2).sum(-1)[masked].mean() / 8 ** 0.5
    torch.testing.assert_close(loss, want)


def test_non_square_images_and_the_student_export():
    d2v = _d2v(size=(16, 24), clone_batch=2)
    out = d2v(_batch(2, size=(16, 24)))
    out["loss"].backward()
    assert d2v.encoder.blocks[0].mlp.fc1.weight.grad is not None
    assert d2v.exports() == {"encoder": "encoder"}  # data2vec 2.0 fine-tunes the student


def test_bad_options_are_one_line_errors():
    for options in [dict(recipe="fast"), dict(top_k=9), dict(decoder_kernel=4),
                    dict(mask_ratio=1.0), dict(clone_batch=0), dict(momentum=1.5)]:
        with pytest.raises(VitsslError):
            _d2v(**options)
    assert _d2v(size=8).num_visible((2, 2)) == 1  # at least one patch stays visible
    with pytest.raises(VitsslError, match="class token"):
        Data2Vec2(build_encoder(ModelConfig(image_size=16, depth=1, class_token=False,
                                            pool="mean")))
