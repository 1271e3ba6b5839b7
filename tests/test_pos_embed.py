"""Fixed 2-D sin-cos position embeddings (``model.pos_embed=sincos``): the formula, any grid,
never trained, carried through state dicts; ``auto`` takes the objective's choice."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from vitssl.config import ModelConfig, load_config
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.models.pos_embed import sincos_pos_embed
from vitssl.train.build import resolve_run_config
from vitssl.train.optim import build_optimizer, param_groups


def reference_table(dim: int, rows: int, cols: int, prefix: int = 0) -> np.ndarray:
    """MAE's formula written out per element, in float64."""
    quarter = dim // 4
    table = np.zeros((prefix + rows * cols, dim), dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            for i in range(quarter):
                w = 1.0 / 10000.0 ** (i / quarter)
                row = table[prefix + r * cols + c]
                row[i], row[quarter + i] = math.sin(c * w), math.cos(c * w)
                row[2 * quarter + i], row[3 * quarter + i] = math.sin(r * w), math.cos(r * w)
    return table


def _encoder(pos_embed: str = "sincos", image_size=16, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(ModelConfig(name="Ti/4", image_size=image_size, depth=1,
                                     pos_embed=pos_embed, **kw))


@pytest.mark.parametrize(("dim", "grid", "prefix"), [(8, (2, 3), 0), (192, (7, 7), 1),
                                                     (96, (4, 6), 1), (20, (5, 1), 2)])
def test_table_equals_the_float64_formula(dim, grid, prefix):
    ours = sincos_pos_embed(dim, grid, prefix)
    assert ours.dtype == torch.float32 and ours.shape == (prefix + grid[0] * grid[1], dim)
    expected = torch.from_numpy(reference_table(dim, *grid, prefix)).float()
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("lightly") is None, reason="lightly not installed")
def test_layout_is_maes_get_2d_sincos_pos_embed():
    from lightly.models.utils import get_2d_sincos_pos_embed  # a copy of MAE's code

    theirs = torch.from_numpy(get_2d_sincos_pos_embed(64, 5, cls_token=True)).float()
    torch.testing.assert_close(sincos_pos_embed(64, (5, 5), 1), theirs, atol=1e-6, rtol=0)


def test_bad_widths_and_names_are_refused():
    with pytest.raises(VitsslError, match="multiple of 4"):
        sincos_pos_embed(6, (2, 2))
    with pytest.raises(VitsslError, match="unknown pos_embed 'rope'"):
        _encoder("rope")


def test_auto_takes_the_objectives_choice_and_an_explicit_value_wins():
    def resolved(objective: str, pos_embed: str = "auto") -> str:
        cfg = load_config(None, [f"objective.name={objective}", f"model.pos_embed={pos_embed}"])
        return resolve_run_config(cfg).model.pos_embed

    assert ModelConfig().pos_embed == "auto"
    assert resolved("mae") == resolved("moco-v3") == "sincos"  # their encoders' fixed table
    assert resolved("masked-patch") == resolved("dino") == "learned"  # the ViT's
    assert resolved("mae", "learned") == "learned" and resolved("dino", "sincos") == "sincos"
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=16, depth=1))  # unresolved
    assert isinstance(encoder.pos_embed, nn.Parameter) and not encoder.fixed_pos_embed


def test_sincos_is_a_buffer_that_gets_no_gradient_and_no_update():
    encoder = _encoder()
    table = encoder.sincos_table((4, 4))
    assert encoder.fixed_pos_embed and not encoder.pos_embed.requires_grad
    torch.testing.assert_close(encoder.pos_embed, table, atol=0, rtol=0)
    assert torch.equal(encoder.pos_embed[0, 0], torch.zeros(192))  # the class token's
    assert "pos_embed" in encoder.state_dict()
    assert all(name != "pos_embed" for name, _ in encoder.named_parameters())
    grouped = {id(p) for g in param_groups(encoder, 0.05) for p in g["params"]}
    assert id(encoder.pos_embed) not in grouped
    optimizer = build_optimizer(encoder, lr=1e-2, weight_decay=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        encoder(torch.randn(2, 3, 16, 16)).square().sum().backward()
        optimizer.step()
    assert encoder.pos_embed.grad is None
    torch.testing.assert_close(encoder.pos_embed, table, atol=0, rtol=0)


def test_another_grid_gets_the_table_computed_for_it():
    encoder = _encoder()  # built for 4x4 patches
    for grid in [(6, 8), (3, 5)]:
        expected = torch.from_numpy(reference_table(192, *grid)).float()[None]
        torch.testing.assert_close(encoder.patch_pos_embed(grid), expected, atol=1e-6,
                                   rtol=0)


def test_state_dict_moves_between_grids_and_features_agree():
    small = _encoder()
    big = _encoder(image_size=(24, 32))
    big.load_state_dict(small.state_dict())  # pos_embed: the formula at big's 6x8 grid
    torch.testing.assert_close(big.pos_embed, big.sincos_table((6, 8)), atol=0, rtol=0)
    images = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(big.forward_features(images),
                                   small.forward_features(images), atol=1e-5, rtol=0)
    again = _encoder()
    again.load_state_dict(small.state_dict())
    assert again.fixed_pos_embed
    torch.testing.assert_close(again.pos_embed, small.pos_embed, atol=0, rtol=0)
