"""attention(backend="auto") self-checks the Triton kernel before trusting it, and falls back
to torch SDPA with one warning when the kernel raises or computes wrong values.

On CPU the kernel runs in Triton's interpreter; the tests let "auto" consider CPU tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from vitssl.errors import VitsslError
from vitssl.kernels import AttentionDispatch, attention, dispatch

ta = pytest.importorskip("vitssl.kernels.triton_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def auto_considers_this_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """"auto" considers this device, with no self-check verdict taken yet."""
    monkeypatch.setattr(dispatch, "AUTO_TRITON_DEVICES", (DEVICE,))
    dispatch.reset()
    yield
    dispatch.reset()


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
    real, seen = ta.triton_attention, []

    def off_by_a_little(q, k, v, **kwargs):  # noqa: ANN001, ANN202
        seen.append(tuple(q.shape))
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
    assert seen == [(2, 2, 37, 16), (2, 2, 37, 24), (1, 2, 21, 24)]  # D = 24 passed: Triton
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # D = 16 stays failed: SDPA, no second check or warning
        assert torch.equal(attention(*qkv(d=16)), out)
    assert len(seen) == 3


def test_nan_from_the_kernel_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ta.triton_attention
    monkeypatch.setattr(ta, "triton_attention",
                        lambda q, k, v, **kw: real(q, k, v, **kw) * float("nan"))
    assert dispatch.self_check(DEVICE, 16, torch.float32) is not None


def test_triton_backend_still_refuses_what_it_cannot_take(calls) -> None:  # noqa: ANN001
    q, k, v = qkv(d=264)
    with pytest.raises(VitsslError, match="head dims up to 256"):
        attention(q, k, v, backend="triton")
    assert attention(q, k, v).shape == (1, 2, 21, 264)
    assert calls == []  # auto never self-checked a shape Triton refuses


def test_the_verdict_is_taken_while_tracing_without_a_graph_break(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    q, k, v = qkv()
    explained = torch._dynamo.explain(lambda q, k, v: attention(q, k, v) * 2)(q, k, v)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert "fused_attention_fwd" in str(explained.graphs[0].code)
    seen, real = [], ta.triton_attention
    monkeypatch.setattr(ta, "triton_attention",
                        lambda q, k, v, **kw: seen.append(tuple(q.shape)) or real(q, k, v, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v)  # eager, after tracing: the passed verdict is kept, no new check
    assert seen == [(1, 2, 21, 16)]


def test_a_call_site_checks_its_backend_once_and_keeps_its_choice(
        monkeypatch: pytest.MonkeyPatch, calls) -> None:  # noqa: ANN001
    with pytest.raises(VitsslError, match="accepted: auto, triton, sdpa, reference"):
        AttentionDispatch("flash")
    chosen, real = [], dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda *a, **kw: chosen.append(a[0].shape[-1])
                        or real(*a, **kw))
    site = AttentionDispatch("auto")
    q, k, v = qkv()
    out = site(q, k, v)
    site(q, k, v)
    site(*qkv(n=9))  # another length: the same kind of input
    assert chosen == [16]
    assert calls == [(2, 2, 37, 16), (1, 2, 21, 16), (1, 2, 21, 16), (1, 2, 9, 16)]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5,
                               atol=1e-5)
    site(*qkv(d=24))  # another head dim is decided (and self-checked) on its own
    assert chosen == [16, 24] and calls[4:] == [(2, 2, 37, 24), (1, 2, 21, 24)]
    site(q, k, v, dropout_p=0.5)  # dropout: a new choice, SDPA
    assert chosen == [16, 24, 16] and len(calls) == 6
