"""Feature extraction: equals the encoder's output, cached until the weights change."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vitssl.config import ModelConfig
from vitssl.eval.features import cached_features, extract_features
from vitssl.models import build_encoder


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
