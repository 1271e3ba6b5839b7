"""torch.compile over the encoder with the Triton attention op: one graph, eager numerics.

On CPU the kernel runs in Triton's interpreter; the ``aot_eager`` backend traces the
forward and backward through the op's fake implementation and autograd rule, as
inductor would, without generating C++.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vitssl.config import load_config
from vitssl.models.build import build_encoder

pytest.importorskip("vitssl.kernels.triton_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "inductor" if torch.cuda.is_available() else "aot_eager"


def tiny_encoder() -> torch.nn.Module:
    # Ti/8 at 32 px: 17 tokens (a ragged tile), 3 heads of 64, two blocks.
    cfg = load_config(overrides=["model.name=Ti/8", "model.image_size=32", "model.depth=2",
                                 "model.attention=triton"])
    torch.manual_seed(0)
    return build_encoder(cfg.model).to(DEVICE)


def test_compiled_encoder_matches_eager_in_one_graph() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    eager = tiny_encoder()
    compiled_model = copy.deepcopy(eager)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    weights = torch.randn(2, 17, 192, generator=torch.Generator().manual_seed(2)).to(DEVICE)

    explained = torch._dynamo.explain(compiled_model.forward_features)(images)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    code = str(explained.graphs[0].code)
    assert code.count("torch.ops.vitssl.fused_attention_fwd.default(") == 2  # one per block

    torch._dynamo.reset()
    forward = torch.compile(compiled_model.forward_features, backend=BACKEND, fullgraph=True)
    feats, ref = forward(images), eager.forward_features(images)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    (feats * weights).sum().backward()
    (ref * weights).sum().backward()
    for (name, p), ref_p in zip(compiled_model.named_parameters(), eager.parameters(),
                                strict=True):
        torch.testing.assert_close(p.grad, ref_p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert any(p.grad.abs().sum() > 0 for p in compiled_model.parameters())


def test_op_has_a_fake_implementation_and_autograd() -> None:
    ta = pytest.importorskip("vitssl.kernels.triton_attention")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 17, 16, generator=g).to(DEVICE) for _ in range(3))
    torch.library.opcheck(ta.fused_attention_fwd, (q, k, v, 0.25, [16, 16, 4, 1]),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
