r"""Backward kernel for dq: one program owns the dq rows of one forward tile.

Same tiling and loop order as the forward (fwd.py): rows are (position, query head) pairs,
the outer loop runs over the offset u = i - k, the inner loop over j-blocks. With
dA = P * (dP - Delta) (CONTRACT §1):

    a   = q * k2[i - u],  b = dout * v2[i - u]          built once per u
    z   = a @ k1^T * scale                               exactly the forward's operations
    P   = exp(min((z - lse) - lse_lo, 0))                natural units, clamped (_common.recomputed_p)
    dP  = b @ v1^T
    x  += dA @ k1[j-block]
    dq += x * k2[i - u]                                   once per u; times scale at the end

Determinant logits: a = k2[i - u] x q as in the forward, and dq += x x k2[i - u] (the chunkwise
cross product, x's channels permuted in registers once per u). Packed sequences as in fwd.py.
Each program writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from ._common import (
    P_HEAD_PACKED,
    P_HEAD_TAIL,
    P_J_PAST_N,
    P_J_REPEAT,
    P_J_TAIL,
    P_K_OUTSIDE,
    P_U_REPEAT,
    channels_at,
    chunk_shifts,
    count_common_paths,
    j_window_mask,
    mma,
    query_tile,
    query_tile_loops,
    recomputed_p,
    sequence_span,
)


@triton.jit(do_not_specialize=["stride_lh"])
def _two_simplicial_bwd_dq_kernel(
    Q, K1, K2, V1, V2, DOUT, LSE, LSE_LO, DELTA, DQ, CU_SEQLENS, COUNTS,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_lb, stride_lh,
    stride_dqb, stride_dqn, stride_dqh,
    N, GROUP, D, L1, R1, L2, R2,
    scale,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    # 64-bit scalar bases plus 32-bit in-tile offsets, sequence-relative positions, as in fwd.py.
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    p0, g, b, h0, rp, rh, pos, row_ok = query_tile(n, GROUP, BLOCK_M, BLOCK_H)
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        count_common_paths(COUNTS, p0, n, D, GROUP, R1, R2, BLOCK_M // BLOCK_H, BLOCK_D, VARLEN, DET)
        if BLOCK_H > 1:
            tl.atomic_add(COUNTS + P_HEAD_PACKED, tl.where(p0 < n, 1, 0))
        tl.atomic_add(COUNTS + P_HEAD_TAIL, tl.sum(tl.where((pos < n) & ~row_ok, 1, 0)))
    if VARLEN:  # a batched grid has no tile past its sequence
        if p0 >= n:
            return
    dt = K1.dtype.element_ty
    r0 = p0.to(tl.int64) + start  # the tile's first row
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)

    q_ptrs = (
        Q
        + b * stride_qb
        + h0 * stride_qh
        + r0 * stride_qn
        + (rp[:, None] * stride_qn + rh[:, None] * stride_qh + d[None, :] * stride_qd)
    )
    do_ptrs = (
        DOUT
        + b * stride_dob
        + h0 * stride_doh
        + r0 * stride_don
        + (rp[:, None] * stride_don + rh[:, None] * stride_doh + d[None, :] * stride_dod)
    )
    row_offs = b * stride_lb + h0 * stride_lh + r0 + (rh * stride_lh + rp)
    lse = tl.load(LSE + row_offs, mask=row_ok, other=0.0)
    lse_lo = tl.load(LSE_LO + row_offs, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_offs, mask=row_ok, other=0.0)

    k1_offs = jr[:, None] * stride_k1n + d[None, :] * stride_k1d
    v1_offs = jr[:, None] * stride_v1n + d[None, :] * stride_v1d
    k2_offs = rp[:, None] * stride_k2n + d[None, :] * stride_k2d
    v2_offs = rp[:, None] * stride_v2n + d[None, :] * stride_v2d
    k1_base = K1 + b * stride_k1b + g.to(tl.int64) * stride_k1h + start * stride_k1n
    v1_base = V1 + b * stride_v1b + g.to(tl.int64) * stride_v1h + start * stride_v1n
    k2_base = K2 + b * stride_k2b + g.to(tl.int64) * stride_k2h
    v2_base = V2 + b * stride_v2b + g.to(tl.int64) * stride_v2h
    if DET:
        sh1, sh2 = chunk_shifts(d, D)

    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_M // BLOCK_H)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for u in range(u_lo, u_hi + 1):
        kpos = pos - u
        k_ok = row_ok & (kpos >= 0) & (kpos < n)
        kd_mask = k_ok[:, None] & d_ok[None, :]
        if COUNT_PATHS:
            tl.atomic_add(COUNTS + P_U_REPEAT, tl.where(u > u_lo, 1, 0))
            tl.atomic_add(COUNTS + P_K_OUTSIDE, tl.sum(tl.where(row_ok & ~k_ok, 1, 0)))
        k2u = tl.load(k2_base + (r0 - u) * stride_k2n + k2_offs, mask=kd_mask, other=0.0)
        v2u = tl.load(v2_base + (r0 - u) * stride_v2n + v2_offs, mask=kd_mask, other=0.0)
        # q and dout are re-read (from cache) per u rather than held in registers.
        q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
        if DET:  # a = k2 x q per chunk, channels permuted in registers, as in the forward
            k2_1, k2_2 = channels_at(k2u, d, sh1).to(tl.float32), channels_at(k2u, d, sh2).to(tl.float32)
            a = (k2_1 * channels_at(q, d, sh2).to(tl.float32) - k2_2 * channels_at(q, d, sh1).to(tl.float32)).to(dt)
        else:
            a = (q.to(tl.float32) * k2u.to(tl.float32)).to(dt)
        do = tl.load(do_ptrs, mask=kd_mask, other=0.0)
        bo = (do.to(tl.float32) * v2u.to(tl.float32)).to(dt)
        x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            js = j0 + jr
            j_ok = js <= j_hi
            jd_mask = j_ok[:, None] & d_ok[None, :]
            if COUNT_PATHS:
                tl.atomic_add(COUNTS + P_J_REPEAT, tl.where(j0 > j_lo, 1, 0))
                tl.atomic_add(COUNTS + P_J_TAIL, tl.where(j0 + BLOCK_J - 1 > j_hi, 1, 0))
                tl.atomic_add(COUNTS + P_J_PAST_N, tl.where(j0 + BLOCK_J > n, 1, 0))
            j_start = tl.cast(j0, tl.int64)
            k1b = tl.load(k1_base + j_start * stride_k1n + k1_offs, mask=jd_mask, other=0.0)
            v1b = tl.load(v1_base + j_start * stride_v1n + v1_offs, mask=jd_mask, other=0.0)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
            # The select forms z = fl(s * scale) as the forward does (no fused multiply-add).
            z = tl.where(in_win, s * scale, 0.0)
            p = recomputed_p(tl.where(in_win, (z - lse[:, None]) - lse_lo[:, None], float("-inf")))
            dp = mma(bo, tl.trans(v1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            x = mma(ds.to(dt), k1b, x, INPUT_PRECISION, UPCAST)
        if DET:  # dq += x x k2 per chunk
            k2_1, k2_2 = channels_at(k2u, d, sh1).to(tl.float32), channels_at(k2u, d, sh2).to(tl.float32)
            dq += channels_at(x, d, sh1) * k2_2 - channels_at(x, d, sh2) * k2_1
        else:
            dq += x * k2u.to(tl.float32)

    dq_offs = rp[:, None] * stride_dqn + rh[:, None] * stride_dqh + d[None, :]
    dq_base = DQ + b * stride_dqb + h0 * stride_dqh + r0 * stride_dqn
    tl.store(dq_base + dq_offs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
