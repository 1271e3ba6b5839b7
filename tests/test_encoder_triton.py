"""The encoder on the Triton attention kernel (interpreter on CPU) matches it on torch SDPA."""

from __future__ import annotations

import copy

import pytest
import torch

from vitssl.config import load_config
from vitssl.models.build import build_encoder

ta = pytest.importorskip("vitssl.kernels.triton_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"



@pytest.fixture
def triton_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of every call that reaches the Triton kernel."""
    calls, real = [], ta.triton_attention

    def spy(q, k, v, **kwargs):  # noqa: ANN001, ANN202
        calls.append(tuple(q.shape))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(ta, "triton_attention", spy)
    return calls


def tiny_encoder(attention: str, depth: int = 2) -> torch.nn.Module:
    # Ti/8 at 32 px: 16 patches + the class token = 17 tokens (a ragged tile), 3 heads of 64.
    cfg = load_config(overrides=["model.name=Ti/8", "model.image_size=32",
                                 f"model.depth={depth}", f"model.attention={attention}"])
    torch.manual_seed(0)
    return build_encoder(cfg.model).to(DEVICE)


def test_encoder_forward_backward_on_triton_matches_sdpa(triton_calls) -> None:  # noqa: ANN001
    model = tiny_encoder("triton")
    reference = copy.deepcopy(model)
    reference.set_attention("sdpa")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    feats, ref_feats = model.forward_features(images), reference.forward_features(images)
    assert triton_calls == [(2, 3, 17, 64)] * 2  # both blocks ran the kernel, sdpa did not
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)

    weights = torch.randn_like(feats)
    (feats * weights).sum().backward()
    (ref_feats * weights).sum().backward()
    for (name, p), ref_p in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, ref_p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_encoder_trains_on_triton_like_on_sdpa() -> None:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    targets = torch.randn(2, 192, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    histories = {}
    for backend in ("triton", "sdpa"):
        model = tiny_encoder(backend, depth=1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        histories[backend] = losses
    assert histories["triton"][-1] < histories["triton"][0]
    assert histories["triton"] == pytest.approx(histories["sdpa"], rel=1e-4)
