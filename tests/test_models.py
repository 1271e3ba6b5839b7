"""The encoder: variant sizes, the encoder contract, position-embedding resampling."""

import pytest
import torch
import torch.nn.functional as F

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import VARIANTS, build_encoder, parse_model_name
from vitssl.models.pos_embed import resample_pos_embed


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,paper_millions", [("Ti/16", 5.7), ("S/16", 22), ("B/16", 86),
                                                 ("L/16", 307)])
def test_parameter_counts_match_the_paper(name, paper_millions):
    # The paper's counts are for ImageNet models: encoder plus a 1000-way linear head.
    with torch.device("meta"):
        encoder = build_encoder(ModelConfig(name=name, image_size=224))
    total = _params(encoder) + encoder.embed_dim * 1000 + 1000
    assert abs(total / 1e6 - paper_millions) / paper_millions < 0.01 + 0.05 * (paper_millions < 10)


def test_variant_table_and_name_parser():
    variant, patch = parse_model_name("b/16")
    assert (variant.name, variant.depth, variant.embed_dim, variant.num_heads, patch) == \
        ("B", 12, 768, 12, 16)
    assert parse_model_name("Ti/4")[0] is VARIANTS["Ti"]
    for bad in ("B16", "X/16", "B/0", "B/x"):
        with pytest.raises(VitsslError, match="bad model name"):
            parse_model_name(bad)


def _tiny(**kw) -> torch.nn.Module:
    cfg = dict(name="Ti/4", image_size=32, depth=2, attention="sdpa")
    cfg.update(kw)
    return build_encoder(ModelConfig(**cfg))


def test_encoder_contract_shapes_and_pooling():
    torch.manual_seed(0)
    enc = _tiny().eval()
    x = torch.randn(3, 3, 32, 32)
    feats = enc.forward_features(x)
    assert feats.shape == (3, 1 + 64, 192) and enc.grid_size == (8, 8) and enc.patch_size == 4
    assert torch.equal(enc.pool(feats), feats[:, 0])
    mean = _tiny(pool="mean", class_token=False, fc_norm=True).eval()
    feats = mean.forward_features(x)
    assert feats.shape == (3, 64, 192)
    torch.testing.assert_close(mean.pool(feats), feats.mean(1))  # pool only pools
    expected = F.layer_norm(feats.mean(1), (192,), mean.fc_norm.weight, mean.fc_norm.bias, 1e-6)
    torch.testing.assert_close(mean.forward_head(feats), expected)
    torch.testing.assert_close(mean(x), expected)


def test_encode_with_a_subset_of_patches_equals_encoding_only_those_patches():
    torch.manual_seed(0)
    enc = _tiny(class_token=False, pool="mean").eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = enc.embed_patches(x)
    keep = torch.stack([torch.randperm(64)[:16] for _ in range(2)])
    kept = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, 192))
    out = enc.encode(kept, positions=keep)
    # Independent computation: add the position embedding by hand, then run the blocks.
    pos = enc.pos_embed[0]
    manual = enc.norm(enc.blocks(torch.stack([kept[b] + pos[keep[b]] for b in range(2)])))
    torch.testing.assert_close(out, manual)


def test_resampling_to_the_same_grid_is_the_identity():
    pos = torch.randn(1, 1 + 6 * 4, 8)
    assert torch.equal(resample_pos_embed(pos, (6, 4), (6, 4), num_prefix=1), pos)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resampling_matches_independent_interpolation_on_non_square_grids(mode):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 6, 5)
    out = resample_pos_embed(pos, (4, 6), (6, 9), num_prefix=1, mode=mode, antialias=False)
    assert torch.equal(out[:, :1], pos[:, :1])  # class-token entry kept apart
    for channel in range(5):
        grid = pos[0, 1:, channel].reshape(1, 1, 4, 6)
        expected = F.interpolate(grid, size=(6, 9), mode=mode, align_corners=False)
        torch.testing.assert_close(out[0, 1:, channel], expected.flatten())


def test_resampling_matches_timm():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 7 * 5, 16)
    ours = resample_pos_embed(pos, (7, 5), (10, 3), num_prefix=1)
    theirs = resample_abs_pos_embed(pos, (10, 3), (7, 5), num_prefix_tokens=1)
    torch.testing.assert_close(ours, theirs)


def test_a_model_trained_at_32px_evaluates_at_48px():
    torch.manual_seed(0)
    enc = _tiny()
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    x32 = torch.randn(4, 3, 32, 32)
    for _ in range(3):  # move the position embedding away from its initial values
        opt.zero_grad()
        enc(x32).pow(2).mean().backward()
        opt.step()
    enc.eval()
    x48 = torch.randn(2, 3, 48, 48)
    feats = enc.forward_features(x48)
    assert feats.shape == (2, 1 + 144, 192) and torch.isfinite(feats).all()
    # Loading the 32 px weights into a 48 px model resamples the position embedding.
    big = _tiny(image_size=48).eval()
    big.load_state_dict(enc.state_dict())
    expected = resample_pos_embed(enc.pos_embed.detach(), (8, 8), (12, 12), num_prefix=1)
    torch.testing.assert_close(big.pos_embed.detach(), expected)
    torch.testing.assert_close(big.forward_features(x48), feats)


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(VitsslError, match="multiple of the patch size"):
        _tiny().forward_features(torch.randn(1, 3, 30, 32))
