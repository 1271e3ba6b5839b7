"""MAE: masking keeps exactly int(N(1-r)) patches, the restore order, loss on masked patches;
its training step with the fused AdamW matches the per-parameter loop."""

from __future__ import annotations

import pytest
import torch
from vitssl_plugins.mae import MaskedAutoencoder

from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.models.pos_embed import sincos_pos_embed
from vitssl.ssl.masking import random_masking
from vitssl.train.optim import build_optimizer, param_groups


def _mae(**options) -> MaskedAutoencoder:
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=16, depth=1))
    return MaskedAutoencoder(encoder, **options)


@pytest.mark.parametrize(("n", "ratio"), [(16, 0.75), (49, 0.75), (10, 0.5), (7, 0.3)])
def test_masking_keeps_exactly_int_n_one_minus_r(n, ratio):
    keep = int(n * (1 - ratio))
    seeds = torch.arange(5)
    ids_keep, ids_restore = random_masking(5, n, keep, torch.device("cpu"), seeds.tolist())
    assert ids_keep.shape == (5, keep)
    for row in ids_keep:
        assert len(set(row.tolist())) == keep  # distinct patches
    # The restore permutation inverts the shuffle: shuffled[restore] == identity.
    noise_order = torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(int(s)))
                               .argsort() for s in seeds])
    assert torch.equal(noise_order[:, :keep], ids_keep)
    assert torch.equal(noise_order.gather(1, ids_restore), torch.arange(n).expand(5, n))


def test_the_encoder_sees_only_the_kept_patches():
    mae = _mae()
    seen = []
    encode = mae.encoder.encode
    mae.encoder.encode = lambda tokens, **kw: seen.append(tokens.shape) or encode(tokens, **kw)
    mae({"image": torch.randn(2, 3, 16, 16), "sample_seed": torch.tensor([1, 2])})
    assert seen == [torch.Size([2, 4, 192])]  # 16 patches, 75% masked


def test_predictions_at_visible_positions_do_not_change_the_loss():
    mae = _mae()
    batch = {"image": torch.randn(2, 3, 16, 16), "sample_seed": torch.tensor([3, 4])}
    base = mae(batch)["loss"].item()
    ids_keep, _ = random_masking(2, 16, 4, torch.device("cpu"), batch["sample_seed"].tolist())
    decode = mae.decode

    def perturbed(*args):
        pred = decode(*args).clone()
        rows = torch.arange(2).unsqueeze(1)
        pred[rows, ids_keep] += 100.0  # only the visible patches' predictions
        return pred

    mae.decode = perturbed
    assert mae(batch)["loss"].item() == pytest.approx(base, rel=1e-6)


def test_loss_is_mse_on_masked_patches_against_normalised_pixels():
    mae = _mae(norm_pix_loss=True)
    images = torch.randn(2, 3, 16, 16)
    batch = {"image": images, "sample_seed": torch.tensor([5, 6])}
    ids_keep, ids_restore = random_masking(2, 16, 4, torch.device("cpu"), [5, 6])
    tokens = mae.encoder.embed_patches(images)
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    pred = mae.decode(mae.encoder.encode(visible, positions=ids_keep), ids_restore, (4, 4))
    # Independent patchify: "b c (h p) (w q) -> b (h w) (c p q)".
    target = images.reshape(2, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 48)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) +
                                                        1e-6).sqrt()
    masked = torch.ones(2, 16, dtype=torch.bool)
    masked[torch.arange(2).unsqueeze(1), ids_keep] = False
    expected = ((pred - target) ** 2).mean(-1)[masked].mean()
    assert float(mae(batch)["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_sincos_embeddings_and_bad_options():
    pos = sincos_pos_embed(8, (2, 3))
    assert pos.shape == (6, 8)
    assert torch.allclose(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    with pytest.raises(VitsslError, match="mask_ratio"):
        _mae(mask_ratio=1.0)
    with pytest.raises(VitsslError, match="keeps 0"):
        _mae(mask_ratio=0.95)


def _mae_pair(pos_embed: str) -> list[MaskedAutoencoder]:
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        encoder = build_encoder(ModelConfig(name="Ti/4", image_size=16, depth=1,
                                            pos_embed=pos_embed))
        models.append(MaskedAutoencoder(encoder))
    return models


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_fused_adamw_matches_the_per_parameter_loop(pos_embed):
    """The same update to float rounding: one MAE step, then five steps on fixed gradients.

    (Longer training runs cannot be compared: the key bias's gradient is zero up to
    rounding, and Adam scales that noise up to the learning rate.)
    """
    models = _mae_pair(pos_embed)
    fused = build_optimizer(models[0], lr=1e-3, weight_decay=0.05)
    assert fused.defaults["fused"]
    loop = torch.optim.AdamW(param_groups(models[1], 0.05), lr=1e-3, foreach=False)
    batch = {"image": torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
             "sample_seed": torch.arange(4)}
    for model, optimizer in zip(models, (fused, loop), strict=True):
        model(batch)["loss"].backward()
        optimizer.step()
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
    for _ in range(5):
        for model, optimizer in zip(models, (fused, loop), strict=True):
            for p, grad in zip(model.parameters(), grads, strict=True):
                p.grad = grad.clone()
            optimizer.step()
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


def test_a_fused_step_is_seen_by_the_feature_cache():
    """The fused kernel updates in place without bumping version counters; ours bumps them,
    so features cached before a step are not served after it."""
    from vitssl.eval.features import cached_features

    mae = _mae()
    encoder = mae.encoder
    optimizer = build_optimizer(mae, lr=1e-2, weight_decay=0.05)
    assert optimizer.defaults["fused"]
    data = [(torch.randn(3, 16, 16), 0) for _ in range(4)]
    before = cached_features(encoder, data, show_progress=False).x.clone()
    versions = [p._version for p in mae.parameters()]
    batch = {"image": torch.randn(2, 3, 16, 16), "sample_seed": torch.tensor([1, 2])}
    mae(batch)["loss"].backward()
    optimizer.step()
    assert all(p._version > v for p, v in zip(mae.parameters(), versions, strict=True)
               if p.grad is not None)
    after = cached_features(encoder, data, show_progress=False).x
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, encoder(torch.stack([x for x, _ in data])).detach())


def test_encoder_init_xavier_is_maes_initialisation():
    mae = _mae(encoder_init="xavier")
    qkv = mae.encoder.blocks[0].attn.qkv
    bound = (6 / (qkv.in_features + qkv.out_features)) ** 0.5
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    assert 0.01 < float(mae.encoder.cls_token.detach().std()) < 0.04
    kept = _mae()
    assert float(kept.encoder.blocks[0].attn.qkv.weight.detach().std()) < 0.025  # trunc normal 0.02
    with pytest.raises(VitsslError, match="encoder_init"):
        _mae(encoder_init="lecun")
