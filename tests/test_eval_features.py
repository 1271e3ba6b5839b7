"""Feature extraction: each features= choice by its definition, cached per choice until the
weights change; forward_intermediates against a by-hand pass through the blocks."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from vitssl_plugins.knn import knn_predict

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.eval.features import cached_features, encode_images, extract_features, parse_features
from vitssl.models import build_encoder
from vitssl.plugins import get_registry


def _setup():
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/8", image_size=16, depth=1,
                                        drop_path_rate=0.5)).train()
    images, labels = torch.randn(10, 3, 16, 16), torch.arange(10) % 3
    return encoder, TensorDataset(images, labels), images, labels


def test_batched_extraction_equals_one_eval_mode_forward():
    encoder, dataset, images, labels = _setup()
    feats = extract_features(encoder, dataset, batch_size=4, show_progress=False)
    assert encoder.training  # the mode is restored
    with torch.no_grad():
        expected = encoder.eval()(images)  # eval mode: no stochastic depth
    torch.testing.assert_close(feats.x, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(feats.y, labels) and not feats.x.requires_grad


def test_cache_reuses_features_until_an_optimiser_step():
    encoder, dataset, _, _ = _setup()
    first = cached_features(encoder, dataset, show_progress=False)
    assert cached_features(encoder, dataset, show_progress=False) is first
    other = TensorDataset(*dataset.tensors)  # another dataset object: its own entry
    assert cached_features(encoder, other, show_progress=False) is not first
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    encoder(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    fresh = cached_features(encoder, dataset, show_progress=False)
    assert fresh is not first and not torch.allclose(fresh.x, first.x)


def test_parameter_free_encoders_work():
    _, dataset, images, _ = _setup()
    feats = extract_features(nn.Flatten(), dataset, show_progress=False)
    torch.testing.assert_close(feats.x, images.flatten(1))


# -- forward_intermediates and the features= choices -------------------------------------



def _vit(class_token=True, pool="token", depth=3):
    torch.manual_seed(1)
    return build_encoder(ModelConfig(name="Ti/8", image_size=16, depth=depth,
                                     class_token=class_token, pool=pool)).eval()


def _by_hand_blocks(encoder, images):
    """Every block's output, computed without forward_intermediates."""
    x = encoder.embed_patches(images) + encoder.patch_pos_embed()
    if encoder.cls_token is not None:
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(images), -1, -1)
        x = torch.cat([cls, x], dim=1)
    outs = []
    for block in encoder.blocks:
        x = block(x)
        outs.append(x)
    return outs


@torch.no_grad()
def test_forward_intermediates_selects_blocks_and_matches_forward_features():
    encoder, images = _vit(), torch.randn(2, 3, 16, 16)
    blocks = _by_hand_blocks(encoder, images)
    final, outs = encoder.forward_intermediates(images)
    torch.testing.assert_close(final, encoder.forward_features(images))
    assert len(outs) == 3 and all(o.shape == (2, 5, encoder.embed_dim) for o in outs)
    for got, want in zip(outs, blocks, strict=True):
        torch.testing.assert_close(got, want)
    last2 = encoder.forward_intermediates(images, 2, norm=True, intermediates_only=True)
    torch.testing.assert_close(last2[0], encoder.norm(blocks[1]))
    torch.testing.assert_close(last2[1], final)  # the last block, normed, is the output
    picked = encoder.forward_intermediates(images, [-1, 0], intermediates_only=True)
    torch.testing.assert_close(picked[0], blocks[0])
    torch.testing.assert_close(picked[1], blocks[2])
    (grid,) = encoder.forward_intermediates(images, [1], output_fmt="NCHW",
                                            intermediates_only=True)
    assert grid.shape == (2, encoder.embed_dim, 2, 2)
    torch.testing.assert_close(grid[:, :, 1, 0], blocks[1][:, 1 + 2])  # row 1, column 0
    for bad in ({"indices": 4}, {"indices": [3]}, {"output_fmt": "NHWC"}):
        with pytest.raises(VitsslError):
            encoder.forward_intermediates(images, **bad)


@torch.no_grad()
def test_each_feature_choice_has_its_shape_and_definition():
    encoder, images = _vit(), torch.randn(4, 3, 16, 16)
    d = encoder.embed_dim
    tokens = encoder.forward_features(images)
    _, outs = encoder.forward_intermediates(images, norm=True)
    expected = {
        "pooled": (encoder(images), d),
        "cls": (tokens[:, 0], d),
        "mean": (tokens[:, 1:].mean(1), d),
        "cls+mean": (torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), 2 * d),
        "blocks:1": (tokens[:, 1:].mean(1), d),
        "blocks:2": (torch.cat([o[:, 1:].mean(1) for o in outs[1:]], 1), 2 * d),
        "blocks:3": (torch.cat([o[:, 1:].mean(1) for o in outs], 1), 3 * d),
    }
    dataset = TensorDataset(images, torch.arange(4))
    for name, (want, width) in expected.items():
        got = extract_features(encoder, dataset, batch_size=3, features=name,
                               show_progress=False).x
        assert got.shape == (4, width), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # cls and mean really differ here, so the checks above tell them apart
    assert not torch.allclose(expected["cls"][0], expected["mean"][0])


def test_mean_pooled_encoder_and_missing_class_token():
    encoder, images = _vit(class_token=False, pool="mean"), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        got = encode_images(encoder, images, "mean")
        torch.testing.assert_close(got, encoder.forward_features(images).mean(1))
    dataset = TensorDataset(images, torch.arange(3))
    for name in ("cls", "cls+mean"):
        with pytest.raises(VitsslError, match="no class token"):
            extract_features(encoder, dataset, features=name, show_progress=False)
    with pytest.raises(VitsslError, match="blocks:1 .. blocks:3"):
        extract_features(encoder, dataset, features="blocks:4", show_progress=False)


def test_pre_logits_with_and_without_the_attribute():
    encoder, images = _vit(), torch.randn(3, 3, 16, 16)
    dataset = TensorDataset(images, torch.arange(3))
    with pytest.raises(VitsslError, match="no pre-logits"):
        extract_features(encoder, dataset, features="pre-logits", show_progress=False)
    encoder.pre_logits = nn.Sequential(nn.Linear(encoder.embed_dim, encoder.embed_dim),
                                       nn.Tanh())
    got = extract_features(encoder, dataset, features="pre-logits", show_progress=False).x
    with torch.no_grad():
        pooled = encoder(images)
        w, b = encoder.pre_logits[0].weight, encoder.pre_logits[0].bias
        want = torch.tanh(F.linear(pooled, w, b))
    assert got.shape == (3, encoder.embed_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_choices_list_the_accepted_ones():
    for bad in ("last4", "blocks:0", "blocks:x", "CLS", ""):
        with pytest.raises(VitsslError, match="accepted: pooled, cls, mean, cls\\+mean"):
            parse_features(bad)
    assert parse_features(" blocks:04 ") == "blocks:4"
    for name in ("few-shot", "linear-probe", "knn"):
        with pytest.raises(VitsslError, match="unknown features 'last4'"):
            get_registry().get("evaluators", name)(features="last4")


def test_cache_keys_on_the_feature_choice():
    encoder, dataset, _, _ = _setup()
    pooled = cached_features(encoder, dataset, show_progress=False)
    mean = cached_features(encoder, dataset, features="mean", show_progress=False)
    assert not torch.allclose(pooled.x, mean.x)
    assert cached_features(encoder, dataset, features="mean", show_progress=False) is mean
    assert cached_features(encoder, dataset, show_progress=False) is pooled


def test_evaluators_use_the_chosen_features():
    encoder = _vit()
    torch.manual_seed(2)
    images, labels = torch.randn(40, 3, 16, 16), torch.arange(40) % 4
    task = type("T", (), {"train": TensorDataset(images, labels),
                          "test": TensorDataset(images, labels), "num_classes": 4,
                          "name": "t"})()
    x = extract_features(encoder, task.train, features="cls+mean", show_progress=False).x
    preds = knn_predict(x, labels, x, 4, (3,), 0.07)[3]
    want = 100.0 * (preds == labels).float().mean().item()
    knn = get_registry().get("evaluators", "knn")(k=3, features="cls+mean", progress=False)
    assert knn.run(encoder, task)["knn_k3_top1"] == pytest.approx(want)
