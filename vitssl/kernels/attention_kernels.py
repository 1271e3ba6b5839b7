"""The Triton kernels of the fused attention (launched by :mod:`vitssl.kernels.triton_attention`).

Forward: one program per (batch·head, block of BLOCK_M queries) streams the
keys in tiles of BLOCK_N with an online softmax, so no N×N matrix is stored,
and saves the log-sum-exp (base 2) per query row. Backward, deterministic (no
atomics): delta = rowsum(dO ∘ O); dK and dV per block of keys over all query
blocks; dQ per block of queries over all key blocks. ``N_BUCKET`` is read by
no kernel: it is the autotuner's key.
"""

import triton
import triton.language as tl


@triton.jit
def _load(ptrs, mask, UPCAST: tl.constexpr):
    """A masked tile (0 outside ``mask``), in fp32 under UPCAST."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _at_head(P, H, sb, sh):
    """``P`` moved to this program's (batch, head), given the batch and head strides."""
    bh = tl.program_id(0)
    return P + ((bh // H).to(tl.int64) * sb + (bh % H).to(tl.int64) * sh)


@triton.jit
def _bwd_at_head(Q, K, V, DO, LSE, DELTA, sqb, sqh, skb, skh, svb, svh, sdb, sdh, H, N):
    """The inputs of both backward kernels, moved to this program's (batch, head)."""
    return (_at_head(Q, H, sqb, sqh), _at_head(K, H, skb, skh), _at_head(V, H, svb, svh),
            _at_head(DO, H, sdb, sdh), LSE + tl.program_id(0).to(tl.int64) * N,
            DELTA + tl.program_id(0).to(tl.int64) * N)


@triton.jit
def _attn_fwd(Q, K, V, Out, LSE,
              sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
              H, N, D, qk_scale, N_BUCKET,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    Q = _at_head(Q, H, sqb, sqh)
    K = _at_head(K, H, skb, skh)
    V = _at_head(V, H, svb, svh)
    Out = _at_head(Out, H, sob, soh)
    LSE += tl.program_id(0).to(tl.int64) * N

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    q = _load(Q + rows[:, None] * sqn + dims[None, :], row_ok[:, None] & dim_ok[None, :], UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)  # running max of the scaled scores
    l_i = tl.zeros([BLOCK_M], ACC)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        kt = _load(K + cols[None, :] * skn + dims[:, None], dim_ok[:, None] & col_ok[None, :],
                   UPCAST)  # (D, BLOCK_N)
        v = _load(V + cols[:, None] * svn + dims[None, :], col_ok[:, None] & dim_ok[None, :],
                  UPCAST)
        s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION, out_dtype=ACC)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(Out + rows[:, None] * son + dims[None, :], acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(LSE + rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_delta(Out, DO, DELTA, sob, soh, son, sdb, sdh, sdn, H, N, D,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows < N)[:, None] & (dims < D)[None, :]
    o = tl.load(Out + b * sob + h * soh + rows[:, None] * son + dims[None, :], mask=mask,
                other=0.0).to(ACC)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + dims[None, :], mask=mask,
                 other=0.0).to(ACC)
    tl.store(DELTA + bh.to(tl.int64) * N + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV,
                   sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                   sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
                   H, N, D, qk_scale, sm_scale, N_BUCKET,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    Q, K, V, DO, LSE, DELTA = _bwd_at_head(Q, K, V, DO, LSE, DELTA, sqb, sqh, skb, skh, svb,
                                           svh, sdb, sdh, H, N)
    DK = _at_head(DK, H, sdkb, sdkh)
    DV = _at_head(DV, H, sdvb, sdvh)

    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < N
    dim_ok = dims < D
    kv_mask = col_ok[:, None] & dim_ok[None, :]
    k = _load(K + cols[:, None] * skn + dims[None, :], kv_mask, UPCAST)
    v = _load(V + cols[:, None] * svn + dims[None, :], kv_mask, UPCAST)

    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    for start in range(0, N, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        qt = _load(Q + rows[None, :] * sqn + dims[:, None], dim_ok[:, None] & row_ok[None, :],
                   UPCAST)  # (D, BLOCK_M)
        do = _load(DO + rows[:, None] * sdn + dims[None, :], row_ok[:, None] & dim_ok[None, :],
                   UPCAST)
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION, out_dtype=ACC) * qk_scale  # (BLOCK_N, M)
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(col_ok[:, None] & row_ok[None, :], pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION, out_dtype=ACC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION, out_dtype=ACC)

    dk = dk * sm_scale
    tl.store(DK + cols[:, None] * sdkn + dims[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + cols[:, None] * sdvn + dims[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                 sdqb, sdqh, sdqn,
                 H, N, D, qk_scale, sm_scale, N_BUCKET,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    Q, K, V, DO, LSE, DELTA = _bwd_at_head(Q, K, V, DO, LSE, DELTA, sqb, sqh, skb, skh, svb,
                                           svh, sdb, sdh, H, N)
    DQ = _at_head(DQ, H, sdqb, sdqh)

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    q_mask = row_ok[:, None] & dim_ok[None, :]
    q = _load(Q + rows[:, None] * sqn + dims[None, :], q_mask, UPCAST)
    do = _load(DO + rows[:, None] * sdn + dims[None, :], q_mask, UPCAST)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        t_mask = dim_ok[:, None] & col_ok[None, :]
        kt = _load(K + cols[None, :] * skn + dims[:, None], t_mask, UPCAST)
        vt = _load(V + cols[None, :] * svn + dims[:, None], t_mask, UPCAST)
        s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION, out_dtype=ACC)

    dq = dq * sm_scale
    tl.store(DQ + rows[:, None] * sdqn + dims[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)
