r"""Backward kernel for dq: one program owns the dq rows of one forward tile.

Same tiling and loop order as the forward (fwd.py): rows are (position, query head) pairs,
the outer loop runs over the offset u = i - k, the inner loop over j-blocks. With
dA = P * (dP - Delta) (CONTRACT §1):

    a   = q * k2[i - u],  b = dout * v2[i - u]          built once per u
    P   = exp(min(a @ k1^T * scale - lse, 0))             natural units, clamped (_common.recomputed_p)
    dP  = b @ v1^T
    x  += dA @ k1[j-block]
    dq += x * k2[i - u]                                   once per u; times scale at the end

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
    count_common_paths,
    j_window_mask,
    mma,
    query_tile,
    query_tile_loops,
    recomputed_p,
)


@triton.jit
def _two_simplicial_bwd_dq_kernel(
    Q, K1, K2, V1, V2, DOUT, LSE, DELTA, DQ, COUNTS,
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
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    # 64-bit scalar bases plus 32-bit in-tile offsets, as in fwd.py.
    p0, g, b, h0, rp, rh, pos, row_ok = query_tile(N, GROUP, BLOCK_M, BLOCK_H)
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        count_common_paths(COUNTS, p0 + BLOCK_M // BLOCK_H > N, D, GROUP, R1, R2, BLOCK_D)
        tl.atomic_add(COUNTS + P_HEAD_PACKED, tl.where(BLOCK_H > 1, 1, 0))
        tl.atomic_add(COUNTS + P_HEAD_TAIL, tl.sum(tl.where((pos < N) & ~row_ok, 1, 0)))
    dt = K1.dtype.element_ty
    p0_64 = p0.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)

    q_ptrs = (
        Q
        + b * stride_qb
        + h0 * stride_qh
        + p0_64 * stride_qn
        + (rp[:, None] * stride_qn + rh[:, None] * stride_qh + d[None, :] * stride_qd)
    )
    do_ptrs = (
        DOUT
        + b * stride_dob
        + h0 * stride_doh
        + p0_64 * stride_don
        + (rp[:, None] * stride_don + rh[:, None] * stride_doh + d[None, :] * stride_dod)
    )
    row_off = b * stride_lb + h0 * stride_lh + p0_64 + (rh * stride_lh + rp)
    lse = tl.load(LSE + row_off, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_off, mask=row_ok, other=0.0)

    k1_offs = jr[:, None] * stride_k1n + d[None, :] * stride_k1d
    v1_offs = jr[:, None] * stride_v1n + d[None, :] * stride_v1d
    k2_offs = rp[:, None] * stride_k2n + d[None, :] * stride_k2d
    v2_offs = rp[:, None] * stride_v2n + d[None, :] * stride_v2d
    k1_base = K1 + b * stride_k1b + g.to(tl.int64) * stride_k1h
    v1_base = V1 + b * stride_v1b + g.to(tl.int64) * stride_v1h
    k2_base = K2 + b * stride_k2b + g.to(tl.int64) * stride_k2h
    v2_base = V2 + b * stride_v2b + g.to(tl.int64) * stride_v2h

    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, N, L1, R1, L2, R2, BLOCK_M // BLOCK_H)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for u in range(u_lo, u_hi + 1):
        kpos = pos - u
        k_ok = row_ok & (kpos >= 0) & (kpos < N)
        kd_mask = k_ok[:, None] & d_ok[None, :]
        if COUNT_PATHS:
            tl.atomic_add(COUNTS + P_U_REPEAT, tl.where(u > u_lo, 1, 0))
            tl.atomic_add(COUNTS + P_K_OUTSIDE, tl.sum(tl.where(row_ok & ~k_ok, 1, 0)))
        k_start = p0_64 - u
        k2u = tl.load(k2_base + k_start * stride_k2n + k2_offs, mask=kd_mask, other=0.0)
        v2u = tl.load(v2_base + k_start * stride_v2n + v2_offs, mask=kd_mask, other=0.0)
        # q and dout are re-read (from cache) per u rather than held in registers.
        q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
        do = tl.load(do_ptrs, mask=kd_mask, other=0.0)
        a = (q.to(tl.float32) * k2u.to(tl.float32)).to(dt)
        bo = (do.to(tl.float32) * v2u.to(tl.float32)).to(dt)
        x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            js = j0 + jr
            j_ok = js <= j_hi
            jd_mask = j_ok[:, None] & d_ok[None, :]
            if COUNT_PATHS:
                tl.atomic_add(COUNTS + P_J_REPEAT, tl.where(j0 > j_lo, 1, 0))
                tl.atomic_add(COUNTS + P_J_TAIL, tl.where(j0 + BLOCK_J - 1 > j_hi, 1, 0))
                tl.atomic_add(COUNTS + P_J_PAST_N, tl.where(j0 + BLOCK_J > N, 1, 0))
            j_start = tl.cast(j0, tl.int64)
            k1b = tl.load(k1_base + j_start * stride_k1n + k1_offs, mask=jd_mask, other=0.0)
            v1b = tl.load(v1_base + j_start * stride_v1n + v1_offs, mask=jd_mask, other=0.0)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
            p = recomputed_p(tl.where(in_win, s * scale - lse[:, None], float("-inf")))
            dp = mma(bo, tl.trans(v1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            x = mma(ds.to(dt), k1b, x, INPUT_PRECISION, UPCAST)
        dq += x * k2u.to(tl.float32)

    dq_offs = rp[:, None] * stride_dqn + rh[:, None] * stride_dqh + d[None, :]
    dq_base = DQ + b * stride_dqb + h0 * stride_dqh + p0_64 * stride_dqn
    tl.store(dq_base + dq_offs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
