"""The attention entry point and the Triton fused kernel against float64 math.

Without CUDA the kernel runs in Triton's CPU interpreter (conftest sets
TRITON_INTERPRET=1), so shapes are kept to one or two (batch, head) pairs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from vitssl.errors import VitsslError
from vitssl.kernels import attention, dispatch

ta = pytest.importorskip("vitssl.kernels.triton_attention")
cfgs = pytest.importorskip("vitssl.kernels.attention_configs")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Added to 2x SDPA's own error: about one unit in the last place at the inputs' unit scale
# (the N = 1 gradients are exactly 0, so both errors are pure rounding there).
EPS = {torch.float32: 1e-6, torch.float16: 2.5e-4, torch.bfloat16: 4e-3, torch.float64: 1e-12}



# -- helpers ------------------------------------------------------------------------------


def make_base(b: int, h: int, n: int, d: int, layout: str, seed: int = 0) -> torch.Tensor:
    """float64 storage for q, k, v: one packed projection (B, N, 3·H·D) or (3, B, H, N, D)."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, n, 3 * h * d) if layout == "packed" else (3, b, h, n, d)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)


def split(base: torch.Tensor, layout: str, h: int, d: int) -> tuple[torch.Tensor, ...]:
    """q, k, v as (B, H, N, D) views of ``base`` (as the encoder makes them)."""
    if layout == "packed":
        b, n, _ = base.shape
        return base.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    return base.unbind(0)


def math64(q, k, v, scale=None):  # noqa: ANN001, ANN201
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def run(fn, base64, layout, h, d, dtype, dout, **kwargs):  # noqa: ANN001, ANN201
    """Output and (dq, dk, dv) of ``fn`` on ``base64`` cast to ``dtype``."""
    leaf = base64.to(dtype).requires_grad_()
    q, k, v = split(leaf, layout, h, d)
    out = fn(q, k, v, **kwargs)
    out.backward(dout.to(dtype))
    return out.detach(), split(leaf.grad, layout, h, d)


def errors(out, grads, ref_out, ref_grads) -> list[float]:  # noqa: ANN001
    pairs = [(out, ref_out)] + list(zip(grads, ref_grads, strict=True))
    return [(x.double() - r).abs().max().item() for x, r in pairs]


def check_against_sdpa(b, h, n, d, dtype, layout, config=None):  # noqa: ANN001, ANN201
    """Triton's error vs float64 is at most 2x SDPA's same-dtype error + EPS."""
    base = make_base(b, h, n, d, layout)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn((b, h, n, d), generator=g, dtype=torch.float64).to(DEVICE)
    dout = dout.to(dtype).double()  # both runs see the same rounded gradient
    ref = run(math64, base.to(dtype).double(), layout, h, d, torch.float64, dout)
    got = run(ta.triton_attention, base, layout, h, d, dtype, dout, config=config)
    sdpa = run(F.scaled_dot_product_attention, base, layout, h, d, dtype, dout)
    err_triton, err_sdpa = errors(*got, *ref), errors(*sdpa, *ref)
    names = ("out", "dq", "dk", "dv")
    for name, et, es in zip(names, err_triton, err_sdpa, strict=True):
        assert et <= 2 * es + EPS[dtype], f"{name}: triton err {et:.3g} vs sdpa err {es:.3g}"
    return got


# -- numerics -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("d", [32, 64, 80])
@pytest.mark.parametrize("n", [1, 16, 17, 50, 65, 197])
def test_forward_backward_match_float64(n: int, d: int, dtype: torch.dtype, layout: str) -> None:
    # packed: two heads of one sequence; contiguous: two sequences of one head.
    b, h = (1, 2) if layout == "packed" else (2, 1)
    # The interpreter's cost grows with the number of tile pairs: N = 197 runs on 64-wide
    # tiles (4 x 4, last one ragged), the others on the default 32-wide interpreter tiles.
    config = cfgs.BlockConfig(64, 64) if n > 128 else None
    check_against_sdpa(b, h, n, d, dtype, layout, config)


def test_bfloat16_through_interpreter_upcast() -> None:
    check_against_sdpa(1, 2, 50, 64, torch.bfloat16, "packed")


@pytest.mark.parametrize(("n", "d", "dtype", "layout"), [
    (50, 80, torch.float32, "packed"),
    (33, 32, torch.float16, "contiguous"),
])
def test_results_do_not_depend_on_block_size(n, d, dtype, layout) -> None:  # noqa: ANN001
    a_out, a_grads = check_against_sdpa(1, 2, n, d, dtype, layout, cfgs.BlockConfig(16, 32))
    b_out, b_grads = check_against_sdpa(1, 2, n, d, dtype, layout, cfgs.BlockConfig(32, 16))
    tol = {torch.float32: 1e-6, torch.float16: 2e-3}[dtype]
    for x, y in zip((a_out, *a_grads), (b_out, *b_grads), strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_every_output_element_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    buffers = []

    def poisoned(like, shape=None, dtype=None):  # noqa: ANN001, ANN202
        if shape is None:  # keep like's dimension order, as the real allocator does
            buf = torch.full_like(like, float("nan"), dtype=dtype)
        else:
            buf = torch.full(shape, float("nan"), dtype=dtype or like.dtype, device=like.device)
        buffers.append(buf)
        return buf

    monkeypatch.setattr(ta, "_buffer", poisoned)
    out, grads = check_against_sdpa(2, 2, 17, 80, torch.float32, "packed")
    assert len(buffers) == 6  # out, lse, delta, dq, dk, dv
    for buf in buffers:
        assert torch.isfinite(buf).all()
    assert all(torch.isfinite(t).all() for t in (out, *grads))


def test_no_reads_past_a_head_or_its_dims() -> None:
    n, d = 17, 40
    # Each (b, h) head sits in NaN padding: 3 extra rows and 5 extra columns.
    store = torch.full((3, 2, 2, n + 3, d + 5), float("nan"), dtype=torch.float64, device=DEVICE)
    store[..., :n, :d] = make_base(2, 2, n, d, "contiguous")
    q, k, v = (t.float().requires_grad_() for t in store.unbind(0))
    qv, kv, vv = (t[:, :, :n, :d] for t in (q, k, v))
    assert qv.stride() == (2 * (n + 3) * (d + 5), (n + 3) * (d + 5), d + 5, 1)
    out = ta.triton_attention(qv, kv, vv)
    dout = torch.randn_like(out)
    out.backward(dout)
    leaves = [t.detach()[:, :, :n, :d].double().requires_grad_() for t in (q, k, v)]
    ref = math64(*leaves)
    ref.backward(dout.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for leaf, r in zip((q, k, v), leaves, strict=True):
        torch.testing.assert_close(leaf.grad[:, :, :n, :d].double(), r.grad, rtol=1e-5, atol=1e-5)


def test_gradients_come_back_in_the_inputs_layout() -> None:
    base = make_base(2, 2, 17, 32, "packed").float().requires_grad_()
    q, k, v = split(base, "packed", 2, 32)
    out = ta.triton_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    # q is a (B, N, H, D)-ordered view; its gradient is a dense tensor in the same order.
    for g, x in zip(grads, (q, k, v), strict=True):
        order = sorted(range(4), key=lambda i: -x.stride(i))
        assert sorted(range(4), key=lambda i: -g.stride(i)) == order
        assert g.is_contiguous() is False and g.permute(*order).is_contiguous()
    assert out.transpose(1, 2).is_contiguous()  # the encoder's reshape after attention is free


def test_float64_gradcheck_over_two_tiles() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 20, 8, generator=g, dtype=torch.float64).to(DEVICE)
               .requires_grad_() for _ in range(3))
    config = cfgs.BlockConfig(16, 16)  # N = 20: two query tiles and two key tiles; D padded
    fn = lambda q, k, v: ta.triton_attention(q, k, v, scale=0.7, config=config)
    torch.testing.assert_close(fn(q, k, v), math64(q, k, v, scale=0.7), rtol=1e-7, atol=1e-7)
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


def test_custom_scale_matches_math() -> None:
    base = make_base(1, 2, 33, 24, "contiguous")
    q, k, v = base.float().unbind(0)
    out = attention(q, k, v, backend="triton", scale=0.3)
    torch.testing.assert_close(out.double(), math64(*base.unbind(0), scale=0.3),
                               rtol=1e-5, atol=1e-5)


def test_gradient_of_a_sum_has_zero_strides_and_still_works() -> None:
    base = make_base(1, 2, 17, 16, "contiguous")
    leaf = base.float().requires_grad_()
    ta.triton_attention(*leaf.unbind(0)).sum().backward()  # dO is an expanded scalar
    ref = base.clone().requires_grad_()
    math64(*ref.unbind(0)).sum().backward()
    torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-5, atol=1e-5)


# -- the dispatcher -----------------------------------------------------------------------


def qkv(n: int = 10, d: int = 16, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(1, 2, n, d, generator=g).to(dtype) for _ in range(3)]


def test_auto_uses_sdpa_on_cpu_and_triton_matches_it() -> None:
    q, k, v = qkv()
    auto = attention(q, k, v)
    assert torch.equal(auto, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(attention(q, k, v, backend="triton"), auto,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention(q, k, v, backend="reference"), auto,
                               rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_a_user_error() -> None:
    with pytest.raises(VitsslError, match="accepted: auto, triton, sdpa, reference"):
        attention(*qkv(), backend="flash")


def test_head_dim_above_256_is_refused_by_triton_but_auto_runs() -> None:
    q, k, v = qkv(n=3, d=264)
    with pytest.raises(VitsslError, match="head dims up to 256"):
        attention(q, k, v, backend="triton")
    assert attention(q, k, v).shape == (1, 2, 3, 264)


def test_unsupported_dtype_is_refused_by_triton() -> None:
    with pytest.raises(VitsslError, match="one dtype among"):
        attention(*qkv(dtype=torch.int32), backend="triton")


def test_dropout_with_triton_falls_back_to_sdpa_with_a_warning() -> None:
    dispatch.reset()  # the warning is given once per process
    q, k, v = qkv()
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="runs on torch SDPA"):
        out = attention(q, k, v, backend="triton", dropout_p=0.5)
    torch.manual_seed(5)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))


def test_missing_triton_gives_a_clear_error_and_auto_still_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_triton_module", lambda: ImportError("no module 'triton'"))
    q, k, v = qkv()
    with pytest.raises(VitsslError, match="needs the triton package"):
        attention(q, k, v, backend="triton")
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ta, "_INTERPRETED", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(VitsslError, match="needs CUDA tensors"):
            attention(*qkv(), backend="triton")
