"""attention(backend="auto") self-checks the Triton kernel before trusting it, and falls back
to torch SDPA with one warning when the kernel raises or computes wrong values.

On CPU the kernel runs in Triton's interpreter; the tests let "auto" consider CPU tensors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from vitssl.errors import VitsslError
from vitssl.kernels import attention, dispatch

ta = pytest.importorskip("vitssl.kernels.triton_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def auto_considers_this_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "AUTO_TRITON_DEVICES", (DEVICE,))
    monkeypatch.setattr(dispatch, "_verdicts", {})


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of every call that reaches the (real) Triton kernel."""
    seen, real = [], ta.triton_attention
    monkeypatch.setattr(ta, "triton_attention",
                        lambda q, k, v, **kw: seen.append(tuple(q.shape)) or real(q, k, v, **kw))
    return seen


def qkv(n: int = 21, d: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(1, 2, n, d, generator=g).to(DEVICE) for _ in range(3)]


def test_auto_uses_triton_after_a_passing_self_check(calls) -> None:  # noqa: ANN001
    q, k, v = qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attention(q, k, v)
        attention(q, k, v)
    # the self-check's run, then the two calls; the verdict is cached per (device, D, dtype)
    assert calls == [(2, 2, 37, 16), (1, 2, 21, 16), (1, 2, 21, 16)]
    assert dispatch._verdicts == {(str(q.device), 16, torch.float32): None}
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5,
                               atol=1e-5)


def test_a_raising_kernel_warns_once_and_auto_runs_sdpa(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("PTX JIT compilation failed")

    monkeypatch.setattr(ta, "triton_attention", broken)
    q, k, v = qkv()
    with pytest.warns(UserWarning, match="failed its self-check.*PTX JIT compilation failed"):
        out = attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (device, D, dtype)
        assert torch.equal(attention(q, k, v), out)
    with pytest.raises(RuntimeError, match="PTX JIT"):  # asked for by name: fails loudly
        attention(q, k, v, backend="triton")


def test_wrong_values_are_caught_and_other_head_dims_are_checked_separately(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = ta.triton_attention

    def off_by_a_little(q, k, v, **kwargs):  # noqa: ANN001, ANN202
        out = real(q, k, v, **kwargs)
        return out * 1.01 if q.shape[-1] == 16 else out  # wrong at D = 16 only

    monkeypatch.setattr(ta, "triton_attention", off_by_a_little)
    q, k, v = qkv(d=16)
    with pytest.warns(UserWarning, match="differs from torch SDPA"):
        out = attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    q, k, v = qkv(d=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v)
    assert dispatch._verdicts[(str(q.device), 24, torch.float32)] is None
    assert "differs" in dispatch._verdicts[(str(q.device), 16, torch.float32)]


def test_nan_from_the_kernel_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ta.triton_attention
    monkeypatch.setattr(ta, "triton_attention",
                        lambda q, k, v, **kw: real(q, k, v, **kw) * float("nan"))
    assert dispatch.self_check(DEVICE, 16, torch.float32) is not None


def test_triton_backend_still_refuses_what_it_cannot_take() -> None:
    q, k, v = qkv(d=264)
    with pytest.raises(VitsslError, match="head dims up to 256"):
        attention(q, k, v, backend="triton")
    assert dispatch._verdicts == {}  # auto never self-checked a shape Triton refuses
    assert attention(q, k, v).shape == (1, 2, 21, 264)


def test_the_verdict_is_taken_while_tracing_without_a_graph_break() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    q, k, v = qkv()
    explained = torch._dynamo.explain(lambda q, k, v: attention(q, k, v) * 2)(q, k, v)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert "fused_attention_fwd" in str(explained.graphs[0].code)
    assert dispatch._verdicts == {(str(q.device), 16, torch.float32): None}
