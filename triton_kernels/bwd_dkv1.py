r"""Backward kernel for dk1 and dv1: one program owns BLOCK_J k1/v1 positions of one kv head.

The program walks the queries i whose window J(i) meets its tile, one at a time, and for each
the k2 window K(i) in BLOCK_K blocks, and then every query head h of the kv head's group (GQA:
the kv gradient is the sum over the group). Per (i, k-block, h), with rows j of the tile:

    bq   = q[i, h] * k2[k-block],  bo = dout[i, h] * v2[k-block]      [BLOCK_K, D]
    P    = exp(min((k1 @ bq^T * scale - lse[i]) - lse_lo[i], 0))      [BLOCK_J, BLOCK_K]
    dP   = v1 @ bo^T
    dk1 += (P * (dP - Delta[i])) @ bq                                 (times scale at the end)
    dv1 += P @ bo

k1 and v1 of the tile stay resident as the left operands; the k2/v2 block is loaded once per
(i, k-block) and reused by every head of the group. For query i the window K(i) is a band of
w2 positions independent of j, so the k-blocks hold no pairs outside it; the sum over all
tiles of the queries visited is (w1 + BLOCK_J - 1) / w1 of the useful work.
Determinant logits: bq = k2[k-block] x q[i, h] per chunk, the forward's operand (loads at
permuted channels); the rest is unchanged. Packed sequences as in fwd.py.
Each program writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from . import paths
from ._common import (
    channels_at,
    chunk_shifts,
    count_common_paths,
    mma,
    recomputed_p,
    row_block_ptrs,
    sequence_span,
)

#   i_repeat / k_repeat / h_repeat   a second trip of the loop over queries i / k-blocks / heads
#   k_tail / k_past_n               a k-block with rows past K(i) / past N (zero-filled)
P_I_REPEAT, P_K_REPEAT, P_K_TAIL, P_K_PAST_N, P_H_REPEAT = paths.slots(
    ("bwd_dkv1",), "i_repeat", "k_repeat", "k_tail", "k_past_n", "h_repeat"
)


@triton.jit(do_not_specialize=["stride_lh"])
def _two_simplicial_bwd_dkv1_kernel(
    Q, K1, K2, V1, V2, DOUT, LSE, LSE_LO, DELTA, DK1, DV1, CU_SEQLENS, COUNTS,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_lb, stride_lh,
    stride_gb, stride_gn, stride_gh,
    N, GROUP, D, L1, R1, L2, R2,
    scale,
    BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    # 64-bit scalar bases plus 32-bit in-tile offsets, sequence-relative positions, as in fwd.py.
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    j0 = tl.program_id(0) * BLOCK_J
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        count_common_paths(COUNTS, j0, n, D, GROUP, R1, R2, BLOCK_J, BLOCK_D, VARLEN, DET)
    if VARLEN:  # a batched grid has no tile past its sequence
        if j0 >= n:
            return
    dt = K1.dtype.element_ty
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    r0 = tl.cast(j0, tl.int64) + start  # the tile's first row

    jr = tl.arange(0, BLOCK_J)
    js = j0 + jr
    j_ok = js < n
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    kr = tl.arange(0, BLOCK_K)
    jd_mask = j_ok[:, None] & d_ok[None, :]
    k1_ptrs = row_block_ptrs(K1, b, g, r0, stride_k1b, stride_k1n, stride_k1h, stride_k1d, jr, d)
    v1_ptrs = row_block_ptrs(V1, b, g, r0, stride_v1b, stride_v1n, stride_v1h, stride_v1d, jr, d)
    k1t = tl.load(k1_ptrs, mask=jd_mask, other=0.0)
    v1t = tl.load(v1_ptrs, mask=jd_mask, other=0.0)

    k2_offs = kr[:, None] * stride_k2n + d[None, :] * stride_k2d
    v2_offs = kr[:, None] * stride_v2n + d[None, :] * stride_v2d
    k2_base = K2 + b * stride_k2b + g * stride_k2h + start * stride_k2n
    v2_base = V2 + b * stride_v2b + g * stride_v2h + start * stride_v2n
    q_base = Q + b * stride_qb + (g * GROUP) * stride_qh + start * stride_qn
    do_base = DOUT + b * stride_dob + (g * GROUP) * stride_doh + start * stride_don
    row_base = b * stride_lb + (g * GROUP) * stride_lh + start
    if DET:
        sh1, sh2 = chunk_shifts(d, D)

    # j is in J(i) = [i - L1, i + R1]  <=>  i is in [j - R1, j + L1].
    j_last = tl.minimum(j0 + BLOCK_J - 1, n - 1)
    i_lo = tl.maximum(j0 - R1, 0)
    i_hi = tl.minimum(j_last + L1, n - 1)

    dk1 = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    dv1 = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    for i in range(i_lo, i_hi + 1):
        i64 = tl.cast(i, tl.int64)
        row_in = j_ok & (js >= i - L1) & (js <= i + R1)
        k_lo = tl.maximum(i - L2, 0)
        k_hi = tl.minimum(i + R2, n - 1)
        if COUNT_PATHS:
            tl.atomic_add(COUNTS + P_I_REPEAT, tl.where(i > i_lo, 1, 0))
        for k0 in range(k_lo, k_hi + 1, BLOCK_K):
            if COUNT_PATHS:
                tl.atomic_add(COUNTS + P_K_REPEAT, tl.where(k0 > k_lo, 1, 0))
                tl.atomic_add(COUNTS + P_K_TAIL, tl.where(k0 + BLOCK_K - 1 > k_hi, 1, 0))
                tl.atomic_add(COUNTS + P_K_PAST_N, tl.where(k0 + BLOCK_K > n, 1, 0))
            k_ok = k0 + kr <= k_hi
            kd_mask = k_ok[:, None] & d_ok[None, :]
            k_start = tl.cast(k0, tl.int64)
            k2b = tl.load(k2_base + k_start * stride_k2n + k2_offs, mask=kd_mask, other=0.0)
            v2b = tl.load(v2_base + k_start * stride_v2n + v2_offs, mask=kd_mask, other=0.0)
            in_win = row_in[:, None] & k_ok[None, :]
            for hh in range(GROUP):
                if COUNT_PATHS:
                    tl.atomic_add(COUNTS + P_H_REPEAT, tl.where(hh > 0, 1, 0))
                h64 = tl.cast(hh, tl.int64)
                q_ptrs = q_base + h64 * stride_qh + i64 * stride_qn + d * stride_qd
                doi = tl.load(do_base + h64 * stride_doh + i64 * stride_don + d * stride_dod, mask=d_ok, other=0.0)
                lse = tl.load(LSE + row_base + h64 * stride_lh + i64)
                lse_lo = tl.load(LSE_LO + row_base + h64 * stride_lh + i64)
                delta = tl.load(DELTA + row_base + h64 * stride_lh + i64)
                if DET:  # bq = k2 x q per chunk, the forward's operand (k2's channels permuted in registers)
                    q1 = tl.load(q_ptrs + sh1 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
                    q2 = tl.load(q_ptrs + sh2 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
                    k2_1, k2_2 = channels_at(k2b, d, sh1).to(tl.float32), channels_at(k2b, d, sh2).to(tl.float32)
                    bq = (k2_1 * q2[None, :] - k2_2 * q1[None, :]).to(dt)
                else:
                    qi = tl.load(q_ptrs, mask=d_ok, other=0.0)
                    bq = (qi.to(tl.float32)[None, :] * k2b.to(tl.float32)).to(dt)
                bo = (doi.to(tl.float32)[None, :] * v2b.to(tl.float32)).to(dt)
                s = mma(k1t, tl.trans(bq), tl.zeros([BLOCK_J, BLOCK_K], tl.float32), INPUT_PRECISION, UPCAST)
                # The select forms z = fl(s * scale) as the forward does (no fused multiply-add).
                z = tl.where(in_win, s * scale, 0.0)
                p = recomputed_p(tl.where(in_win, (z - lse) - lse_lo, float("-inf")))
                dp = mma(v1t, tl.trans(bo), tl.zeros([BLOCK_J, BLOCK_K], tl.float32), INPUT_PRECISION, UPCAST)
                ds = p * (dp - delta)
                dk1 = mma(ds.to(dt), bq, dk1, INPUT_PRECISION, UPCAST)
                dv1 = mma(p.to(dt), bo, dv1, INPUT_PRECISION, UPCAST)

    out_offs = b * stride_gb + g * stride_gh + r0 * stride_gn + (jr[:, None] * stride_gn + d[None, :])
    tl.store(DK1 + out_offs, (dk1 * scale).to(DK1.dtype.element_ty), mask=jd_mask)
    tl.store(DV1 + out_offs, dv1.to(DV1.dtype.element_ty), mask=jd_mask)
