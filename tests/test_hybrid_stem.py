"""Hybrid ResNet stems: layouts, weight standardisation, "SAME" padding, timm parity."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from vitssl_plugins.hybrid_stem import MaxPool2dSame, StdConv2dSame, standardize_weight

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry

# name, image size (H, W), patch size, expected grid, expected feature channels, stage depths
LAYOUTS = [
    ("resnet50-hybrid", (32, 48), 16, (2, 3), 1024, (3, 4, 9)),
    ("resnet50-hybrid-s32", (32, 64), 32, (1, 2), 2048, (3, 4, 6, 3)),
    ("resnet26-hybrid", (64, 32), 32, (2, 1), 2048, (2, 2, 2, 2)),
    ("resnet-tiny-hybrid", (32, 32), 4, (8, 8), 64, (2,)),
]


@pytest.mark.parametrize("name,size,patch,grid,channels,depths", LAYOUTS)
def test_layout_shapes_and_grid(name, size, patch, grid, channels, depths):
    torch.manual_seed(0)
    stem = get_registry().get("stems", name)(image_size=size, patch_size=patch, in_chans=3,
                                             embed_dim=24)
    assert tuple(len(s.blocks) for s in stem.backbone.stages) == depths
    assert stem.backbone.num_features == channels
    assert stem.grid_size == grid and stem.patch_size == (patch, patch)
    assert stem.proj.kernel_size == (1, 1)
    seen = []
    stem.backbone.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        tokens = stem(torch.randn(2, 3, *size))
    assert seen == [(2, channels, *grid)]
    assert tokens.shape == (2, grid[0] * grid[1], 24)


def test_patch_size_multiple_of_downsampling_uses_a_larger_projection():
    stem = get_registry().get("stems", "resnet-tiny-hybrid")(
        image_size=32, patch_size=8, in_chans=3, embed_dim=16)
    assert stem.proj.kernel_size == (2, 2) and stem.grid_size == (4, 4)
    assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16)
    with pytest.raises(VitsslError, match="multiple of its 4x"):
        get_registry().get("stems", "resnet-tiny-hybrid")(
            image_size=32, patch_size=6, in_chans=3, embed_dim=16)
    with pytest.raises(VitsslError, match="not a multiple"):
        stem(torch.randn(1, 3, 36, 32))


def test_encoder_with_hybrid_stem_resamples_position_embeddings():
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", stem="resnet-tiny-hybrid", image_size=32,
                                        depth=1)).eval()
    assert encoder.patch_size == 4 and encoder.grid_size == (8, 8)
    with torch.no_grad():
        assert encoder.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 65, 192)
        assert encoder.forward_features(torch.randn(2, 3, 48, 40)).shape == (2, 1 + 12 * 10, 192)


def test_weight_standardisation_matches_float64_reference():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3) * 3 + 0.7
    flat = weight.double().reshape(6, -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = ((flat - mean) ** 2).mean(dim=1, keepdim=True)
    reference = ((flat - mean) / torch.sqrt(var + 1e-8)).reshape(weight.shape)
    torch.testing.assert_close(standardize_weight(weight, 1e-8).double(), reference,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,stride,pad", [((7, 8), 2, ((1, 1), (0, 1))),
                                             ((9, 9), 1, ((1, 1), (1, 1)))])
def test_std_conv_same_padding_matches_reference(size, stride, pad):
    torch.manual_seed(0)
    conv = StdConv2dSame(4, 6, 3, stride, eps=1e-8)
    x = torch.randn(2, 4, *size)
    w = conv.weight.detach().double()
    flat = w.reshape(6, -1)
    w_std = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True))
    (top, bottom), (left, right) = pad
    padded = F.pad(x.double(), (left, right, top, bottom))
    reference = F.conv2d(padded, w_std.reshape(w.shape), stride=stride)
    out = conv(x)
    assert out.shape[-2:] == tuple(math.ceil(s / stride) for s in size)
    torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=1e-5)
    # Standardised filters: a per-filter affine change of the weights changes nothing.
    with torch.no_grad():
        conv.weight.mul_(torch.rand(6, 1, 1, 1) * 5 + 0.1).add_(torch.randn(6, 1, 1, 1))
    torch.testing.assert_close(conv(x).double(), reference, atol=1e-4, rtol=1e-4)


def test_same_max_pool_pads_with_minus_infinity():
    x = -torch.rand(1, 1, 4, 4) - 1.0  # all negative: zero padding would win the corners
    out = MaxPool2dSame(3, 2)(x)
    # "SAME" for 4 -> 2 with a 3-window pads one cell after: windows rows/cols {0,1,2}, {2,3}.
    expected = torch.stack([torch.stack([x[0, 0, r, c].max() for c in (slice(0, 3), slice(2, 4))])
                            for r in (slice(0, 3), slice(2, 4))])
    torch.testing.assert_close(out[0, 0], expected)


# -- timm parity -----------------------------------------------------------------------------

TIMM_CASES = [
    ("vit_base_r50_s16_224", {"img_size": 32}, (32, 32), 16),
    ("vit_small_r26_s32_224", {"img_size": (64, 32)}, (64, 32), 32),
]


def _timm_hybrid(name, **kwargs):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=0, depth=1, **kwargs).eval()
    with torch.no_grad():  # non-trivial GroupNorm affines, so every parameter matters
        for key, p in model.patch_embed.named_parameters():
            if "norm" in key:
                p.copy_((1.0 if key.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name,kwargs,size,patch", TIMM_CASES)
def test_from_timm_hybrid_matches_forward_features(name, kwargs, size, patch):
    from vitssl.interop import from_timm

    torch.manual_seed(0)
    model = _timm_hybrid(name, **kwargs)
    encoder = from_timm(model).eval()
    assert encoder.patch_size == patch
    assert encoder.grid_size == tuple(s // patch for s in size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x), model.forward_features(x),
                                   atol=1e-5, rtol=0)


def test_hybrid_weights_round_trip_to_timm():
    from vitssl.interop import to_timm_state_dict

    torch.manual_seed(0)
    cfg = ModelConfig(name="S/32", stem="resnet26-hybrid", image_size=64, depth=1)
    encoder = build_encoder(cfg).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    target = _timm_hybrid("vit_small_r26_s32_224", img_size=64)
    target.load_state_dict(to_timm_state_dict(encoder))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.forward_features(x), encoder.forward_features(x),
                                   atol=1e-5, rtol=0)


def _with_backbone(preact, stem_type, conv_layer):
    timm = pytest.importorskip("timm")
    from timm.layers import HybridEmbed
    from timm.models.resnetv2 import ResNetV2

    model = timm.create_model("vit_small_r26_s32_224", pretrained=False, num_classes=0,
                              depth=1, img_size=32).eval()
    backbone = ResNetV2(layers=(1, 2), channels=(256, 512), num_classes=0, global_pool="",
                        stem_type=stem_type, preact=preact, conv_layer=conv_layer)
    model.patch_embed = HybridEmbed(backbone, img_size=32, embed_dim=384)
    model.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + 16, 384) * 0.02)
    with torch.no_grad():
        for key, p in model.patch_embed.named_parameters():
            if "norm" in key:
                p.copy_((1.0 if key.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    return model.eval()


def test_from_timm_preactivation_hybrid_matches_forward_features():
    pytest.importorskip("timm")
    from timm.layers import StdConv2dSame as TimmStdConv2dSame

    from vitssl.interop import from_timm

    torch.manual_seed(0)
    model = _with_backbone(True, "same", partial(TimmStdConv2dSame, eps=1e-8))
    encoder = from_timm(model).eval()
    assert encoder.patch_embed.backbone.norm.weight.shape == (512,)
    assert encoder.grid_size == (4, 4) and encoder.patch_size == 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x), model.forward_features(x),
                                   atol=1e-5, rtol=0)


def test_hybrid_backbone_without_same_padding_is_refused():
    pytest.importorskip("timm")
    from timm.layers import StdConv2d

    from vitssl.interop import from_timm

    model = _with_backbone(False, "", StdConv2d)
    with pytest.raises(VitsslError, match="hybrid ResNet stem"):
        from_timm(model)


def test_masked_patch_pretraining_runs_on_the_tiny_hybrid(tmp_path):
    from vitssl.cli import main

    code = main(["pretrain", "--objective", "masked-patch", "--stem", "resnet-tiny-hybrid",
                 "--model", "Ti/4", "--image-size", "32", "--steps", "3", "--batch-size", "8",
                 "--out", str(tmp_path), "--set", "model.depth=1",
                 "--set", "summary_eval.enabled=false"])
    assert code == 0
    records = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(records) == 3
    assert (tmp_path / "checkpoints" / "step-00000003" / "model.safetensors").is_file()
