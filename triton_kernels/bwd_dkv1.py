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

from . import coverage
from .coverage import hit
from .kv import head_rows, row_block_ptrs, rows_at, tile_offsets
from .mask import in_band
from .operand import chunk_shifts, cross, mma, permuted
from .softmax import recomputed_block
from .tiles import kv_tile, kv_tile_rows, store_kv_tile

#   i_repeat / k_repeat / h_repeat   a second trip of the loop over queries i / k-blocks / heads
#   k_tail / k_past_n               a k-block with rows past K(i) / past N (zero-filled)
P_I_REPEAT, P_K_REPEAT, P_K_TAIL, P_K_PAST_N, P_H_REPEAT = coverage.slots(
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
    start, n, j0 = kv_tile(CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2, BLOCK_J, BLOCK_D, VARLEN, DET, COUNT_PATHS)
    if VARLEN:  # a batched grid has no tile past its sequence
        if j0 >= n:
            return
    dt = K1.dtype.element_ty
    g, b, r0, jr, j_ok = kv_tile_rows(start, n, j0, BLOCK_J)
    js = j0 + jr
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    kr = tl.arange(0, BLOCK_K)
    jd_mask = j_ok[:, None] & d_ok[None, :]
    k1_ptrs = row_block_ptrs(K1, b, g, r0, stride_k1b, stride_k1n, stride_k1h, stride_k1d, jr, d)
    v1_ptrs = row_block_ptrs(V1, b, g, r0, stride_v1b, stride_v1n, stride_v1h, stride_v1d, jr, d)
    k1t = tl.load(k1_ptrs, mask=jd_mask, other=0.0)  # resident for the whole program
    v1t = tl.load(v1_ptrs, mask=jd_mask, other=0.0)

    k2_offs, v2_offs = tile_offsets(kr, d, stride_k2n, stride_k2d), tile_offsets(kr, d, stride_v2n, stride_v2d)
    k2_base = head_rows(K2, b, g, start, stride_k2b, stride_k2h, stride_k2n)
    v2_base = head_rows(V2, b, g, start, stride_v2b, stride_v2h, stride_v2n)
    q_base = head_rows(Q, b, g * GROUP, start, stride_qb, stride_qh, stride_qn)
    do_base = head_rows(DOUT, b, g * GROUP, start, stride_dob, stride_doh, stride_don)
    row_base = b * stride_lb + (g * GROUP) * stride_lh + start
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only

    # j is in J(i) = [i - L1, i + R1]  <=>  i is in [j - R1, j + L1].
    j_last = tl.minimum(j0 + BLOCK_J - 1, n - 1)
    i_lo = tl.maximum(j0 - R1, 0)
    i_hi = tl.minimum(j_last + L1, n - 1)

    dk1 = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    dv1 = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    for i in range(i_lo, i_hi + 1):
        i64 = tl.cast(i, tl.int64)
        row_in = in_band(j_ok, js, i, L1, R1)
        k_lo = tl.maximum(i - L2, 0)
        k_hi = tl.minimum(i + R2, n - 1)
        hit(COUNTS, P_I_REPEAT, i > i_lo, COUNT_PATHS)
        for k0 in range(k_lo, k_hi + 1, BLOCK_K):
            hit(COUNTS, P_K_REPEAT, k0 > k_lo, COUNT_PATHS)
            hit(COUNTS, P_K_TAIL, k0 + BLOCK_K - 1 > k_hi, COUNT_PATHS)
            hit(COUNTS, P_K_PAST_N, k0 + BLOCK_K > n, COUNT_PATHS)
            k_ok = k0 + kr <= k_hi
            kd_mask = k_ok[:, None] & d_ok[None, :]
            k2b = rows_at(k2_base, k0, k2_offs, stride_k2n, kd_mask)
            v2b = rows_at(v2_base, k0, v2_offs, stride_v2n, kd_mask)
            in_win = row_in[:, None] & k_ok[None, :]
            for hh in range(GROUP):
                hit(COUNTS, P_H_REPEAT, hh > 0, COUNT_PATHS)
                h64 = tl.cast(hh, tl.int64)
                q_ptrs = q_base + h64 * stride_qh + i64 * stride_qn + d * stride_qd
                doi = tl.load(do_base + h64 * stride_doh + i64 * stride_don + d * stride_dod, mask=d_ok, other=0.0)
                lse = tl.load(LSE + row_base + h64 * stride_lh + i64)
                lse_lo = tl.load(LSE_LO + row_base + h64 * stride_lh + i64)
                delta = tl.load(DELTA + row_base + h64 * stride_lh + i64)
                if DET:  # bq = k2 x q per chunk, the forward's operand (k2's channels permuted in registers)
                    q1 = tl.load(q_ptrs + sh1 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
                    q2 = tl.load(q_ptrs + sh2 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
                    k2_1, k2_2 = permuted(k2b, d, sh1, sh2)
                    bq = cross(k2_1, k2_2, q1[None, :], q2[None, :]).to(dt)
                else:
                    qi = tl.load(q_ptrs, mask=d_ok, other=0.0)
                    bq = (qi.to(tl.float32)[None, :] * k2b.to(tl.float32)).to(dt)
                bo = (doi.to(tl.float32)[None, :] * v2b.to(tl.float32)).to(dt)
                s = mma(k1t, tl.trans(bq), tl.zeros([BLOCK_J, BLOCK_K], tl.float32), INPUT_PRECISION, UPCAST)
                p, ds = recomputed_block(s, in_win, v1t, bo, lse, lse_lo, delta, scale, False, INPUT_PRECISION, UPCAST)
                dk1 = mma(ds.to(dt), bq, dk1, INPUT_PRECISION, UPCAST)
                dv1 = mma(p.to(dt), bo, dv1, INPUT_PRECISION, UPCAST)

    store_kv_tile(DK1, DV1, dk1, dv1, scale, b, g, r0, jr, d, jd_mask, stride_gb, stride_gn, stride_gh)
