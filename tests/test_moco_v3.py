"""MoCo v3: InfoNCE against a float64 formula, the momentum encoder in closed form, views, heads."""

from __future__ import annotations

import math

import pytest
import torch
from ema_check import train_and_check_ema
from torch import nn
from torchvision.transforms import v2
from vitssl_plugins.moco_v3 import MocoV3, contrastive_loss

from vitssl.config import DataConfig, ModelConfig
from vitssl.data.source import resolve_augmentation
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.ssl.ema import cosine_momentum
from vitssl.ssl.heads import GlobalBatchNorm1d, mlp
from vitssl.ssl.views import ThreeChannels, TwoViews


def _moco(**options) -> MocoV3:
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=8, depth=1))
    return MocoV3(encoder, hidden_dim=16, out_dim=8, **options)


def _batch(step: int = 0, total: int = 4, b: int = 4) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"views": {"pair": torch.randn(b, 2, 3, 8, 8, generator=g)},
            "step": step, "total_steps": total}


def _infonce64(q: torch.Tensor, k: torch.Tensor, tau: float, offset: int) -> float:
    """-mean_i log(exp(cos(q_i, k_{offset+i}) / tau) / sum_j exp(cos(q_i, k_j) / tau)) * 2 tau."""
    q, k = q.double(), k.double()
    total = 0.0
    for i in range(q.shape[0]):
        sims = [float(q[i] @ k[j] / (q[i].norm() * k[j].norm())) / tau for j in range(len(k))]
        total -= sims[offset + i] - math.log(sum(math.exp(s) for s in sims))
    return total / q.shape[0] * 2 * tau


@pytest.mark.parametrize("offset", [0, 5])
def test_loss_matches_the_float64_infonce_formula(offset):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(5, 7, generator=g), 3 * torch.randn(10, 7, generator=g)
    got = contrastive_loss(q, k, 0.2, offset)
    assert float(got) == pytest.approx(_infonce64(q, k, 0.2, offset), rel=1e-5)


def test_forward_is_the_symmetric_loss_of_queries_against_momentum_keys():
    moco = _moco()
    batch = _batch()
    pair = batch["views"]["pair"]
    x1, x2 = pair[:, 0], pair[:, 1]
    with torch.no_grad():
        q1, q2 = (moco.predictor(moco.projector(moco.encoder(x))) for x in (x1, x2))
        k1, k2 = (moco.momentum_projector(moco.momentum_encoder(x)) for x in (x1, x2))
        out = moco(batch)
    expected = _infonce64(q1, k2, 0.2, 0) + _infonce64(q2, k1, 0.2, 0)
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert out["contrastive_acc"].dim() == 0 and 0.0 <= float(out["contrastive_acc"]) <= 1.0


def test_momentum_encoder_is_the_ema_in_closed_form_and_gets_no_gradient():
    moco = _moco(momentum=0.9)
    patch = moco.encoder.patch_embed.proj.weight  # stop-grad conv1: frozen at its init
    patch_init = patch.detach().clone()

    def patch_has_no_gradient():
        assert patch.grad is None

    in_optimizer = train_and_check_ema(
        moco, [moco.momentum_encoder, moco.momentum_projector], [moco.encoder, moco.projector],
        _batch, base=0.9, each_step=patch_has_no_gradient)
    assert id(patch) not in in_optimizer and torch.equal(patch, patch_init)


def test_default_momentum_scales_with_the_run_and_caps_at_the_papers_value():
    moco = _moco()
    assert moco.key_momentum(0, 500) == pytest.approx(0.68)  # update mass 80 over 500 steps
    assert moco.key_momentum(0, 100_000) == pytest.approx(0.99)
    assert moco.key_momentum(0, 100) == 0.0  # a mass beyond the run's reach: from 0
    assert _moco(momentum=0.995).key_momentum(0, 500) == 0.995
    base = moco.key_momentum(0, 500)
    mass = sum(1 - cosine_momentum(base, s, 500) for s in range(500))
    assert mass == pytest.approx(80.0, rel=0.01)


def test_views_are_byol_asymmetric_and_refuse_non_square_sizes():
    views = TwoViews(16)

    def probability(view, kind) -> float:
        for step in view.transforms:  # colour steps sit inside ThreeChannels
            for t in step.steps.transforms if isinstance(step, ThreeChannels) else [step]:
                inner = t.transforms[0] if isinstance(t, v2.RandomApply) else t
                if isinstance(inner, kind):
                    return t.p
        return 0.0

    blur = [probability(v, v2.GaussianBlur) for v in views.views]
    solarize = [probability(v, v2.RandomSolarize) for v in views.views]
    assert blur == [1.0, 0.1] and solarize == [0.0, 0.2]
    out = views(torch.randint(0, 255, (3, 20, 20), dtype=torch.uint8))
    assert out["pair"].shape == (2, 3, 16, 16) and out["pair"].dtype == torch.uint8
    flips = [any(isinstance(t, v2.RandomHorizontalFlip) for t in v.transforms)
             for v in _moco().views((8, 8), type("D", (), {"hflip": False})()).views]
    assert flips == [False, False]
    with pytest.raises(VitsslError, match="square"):
        _moco().views((8, 16), None)
    with pytest.raises(VitsslError, match="pair"):
        _moco()({"image": torch.randn(2, 3, 8, 8)})


@pytest.mark.parametrize("spec, option, changed", [
    ("builtin:digits", None, False),  # digits declare no colour operations
    ("builtin:fashion-mnist", None, True),  # Fashion-MNIST keeps them
    ("builtin:digits", True, True),  # the objective's color option wins
])
def test_colour_operations_follow_the_data_unless_set(spec, option, changed):
    from PIL import Image

    views = _moco(color=option).views((16, 16), resolve_augmentation(DataConfig(spec=spec)))
    torch.manual_seed(0)
    image = Image.new("L", (16, 16), 100)
    values = {int(v) for _ in range(20) for v in views(image)["pair"].unique()}
    assert (values != {100}) == changed


def test_heads_follow_the_reference_builder():
    projector = mlp(6, 16, 8, layers=3)
    kinds = [type(m) for m in projector]
    assert kinds == [nn.Linear, GlobalBatchNorm1d, nn.ReLU] * 2 + [nn.Linear, GlobalBatchNorm1d]
    assert not projector[-1].affine and all(m.bias is None for m in projector[::3])
    predictor = mlp(8, 16, 8, layers=2, last_bn=False)
    assert isinstance(predictor[-1], nn.Linear)


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm1d(5), nn.BatchNorm1d(5)
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ref.weight.copy_(ours.weight)
    x = torch.randn(7, 5) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(7, 5)
    (ours(xa) * weights).sum().backward()
    (ref(xb) * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_exports_the_base_encoder_and_refuses_bad_options():
    assert _moco().exports() == {"encoder": "encoder"}
    with pytest.raises(VitsslError, match="temperature"):
        _moco(temperature=0.0)
    with pytest.raises(VitsslError, match="momentum"):
        _moco(momentum=1.5)
