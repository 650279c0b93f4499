r"""Backward kernel for dk2 and dv2 over k rows, the split path's kv side (host.bwd_path; bwd_dq.py
has dq): one program owns BLOCK_K k2/v2 positions of one kv head.

Where the fused kernel (bwd_dqkv2.py) runs, dk2 / dv2 come from its per-tile partials instead;
this kernel runs where the model ranks the two kernels above it (bwd_dq.py's docstring). It
writes every dk2 / dv2 row once, from one program: no scratch, no reduce.

The window of k2 is short (w2 = 32 in the paper) and that of k1 long (w1 = 512), so walking
single queries i (as bwd_dkv1.py does) would leave most rows of a k2 tile outside K(i). Instead
the program walks the offset t = i - k: for a fixed t every row k has its own query i = k + t,
so the query-side tiles are shifted loads and every row is inside its window. Per (head h, t),
with rows k of the tile:

    a    = k2 * q[k + t, h],  bo = v2 * dout[k + t, h]                 [BLOCK_K, D] once per t
    P    = exp(min((a @ k1[j-block]^T * scale - lse[k + t]) - lse_lo[k + t], 0))
    dP   = bo @ v1[j-block]^T
    x   += (P * (dP - Delta[k + t])) @ k1[j-block]
    y   += P @ v1[j-block]
    dk2 += x * q[k + t, h],  dv2 += y * dout[k + t, h]                 once per t (dk2 times scale)

The j-blocks cover the union of J(k + t) over the tile, (w1 + BLOCK_K - 1) positions for w1.
The inner loop is four tensor-core products on loaded tiles. GQA: the loop over h sums the
group's query heads. Determinant logits: a = k2 x q[k + t, h] per chunk (the forward's
operand; the tile's k2 held at its two permuted channel orders) and dk2 += q[k + t, h] x x (x's
channels permuted in registers once per t). Packed sequences as in fwd.py. Each program
writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from . import coverage
from .bwd_dqkv2 import recomputed_j_block
from .coverage import hit, hits
from .kv import head_rows, row_block_ptrs, rows_at, tile_offsets
from .operand import channels_at, chunk_shifts, cross, mma, permuted
from .tiles import kv_tile, kv_tile_rows, store_kv_tile

#   h_repeat / t_repeat / j_repeat   a second trip of the loop over heads / offsets t / j-blocks
#   i_outside                       a row whose query i = k + t lies outside [0, N) (zero-filled)
#   j_tail / j_past_n               a j-block with rows past the union of J(i) / past N
P_H_REPEAT, P_T_REPEAT, P_I_OUTSIDE, P_J_REPEAT, P_J_TAIL, P_J_PAST_N = coverage.slots(
    ("bwd_dkv2",), "h_repeat", "t_repeat", "i_outside", "j_repeat", "j_tail", "j_past_n"
)


@triton.jit(do_not_specialize=["stride_lh"])
def _two_simplicial_bwd_dkv2_kernel(
    Q, K1, K2, V1, V2, DOUT, LSE, LSE_LO, DELTA, DK2, DV2, CU_SEQLENS, COUNTS,
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
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    start, n, k0 = kv_tile(CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2, BLOCK_K, BLOCK_D, VARLEN, DET, COUNT_PATHS)
    if VARLEN:  # a batched grid has no tile past its sequence
        if k0 >= n:
            return
    dt = K1.dtype.element_ty
    g, b, r0, kr, k_ok = kv_tile_rows(start, n, k0, BLOCK_K)
    ks = k0 + kr
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)
    kd_mask = k_ok[:, None] & d_ok[None, :]
    k2_ptrs = row_block_ptrs(K2, b, g, r0, stride_k2b, stride_k2n, stride_k2h, stride_k2d, kr, d)
    v2_ptrs = row_block_ptrs(V2, b, g, r0, stride_v2b, stride_v2n, stride_v2h, stride_v2d, kr, d)
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    q_sh1, q_sh2 = (sh1 * stride_qd)[None, :], (sh2 * stride_qd)[None, :]
    k2t = tl.load(k2_ptrs, mask=kd_mask, other=0.0)  # resident for the whole program
    v2t = tl.load(v2_ptrs, mask=kd_mask, other=0.0)

    q_offs, do_offs = tile_offsets(kr, d, stride_qn, stride_qd), tile_offsets(kr, d, stride_don, stride_dod)
    k1_offs, v1_offs = tile_offsets(jr, d, stride_k1n, stride_k1d), tile_offsets(jr, d, stride_v1n, stride_v1d)
    k1_base = head_rows(K1, b, g, start, stride_k1b, stride_k1h, stride_k1n)
    v1_base = head_rows(V1, b, g, start, stride_v1b, stride_v1h, stride_v1n)

    # k is in K(i) = [i - L2, i + R2]  <=>  t = i - k is in [-R2, L2]; keep some i in [0, n).
    k_last = tl.minimum(k0 + BLOCK_K - 1, n - 1)
    t_lo = tl.maximum(-R2, -k_last)
    t_hi = tl.minimum(L2, n - 1 - k0)

    dk2 = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    dv2 = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    for hh in range(GROUP):
        hit(COUNTS, P_H_REPEAT, hh > 0, COUNT_PATHS)
        h64 = g * GROUP + tl.cast(hh, tl.int64)
        q_base = head_rows(Q, b, h64, 0, stride_qb, stride_qh, stride_qn)
        do_base = head_rows(DOUT, b, h64, 0, stride_dob, stride_doh, stride_don)
        row_base = b * stride_lb + h64 * stride_lh
        for t in range(t_lo, t_hi + 1):
            ipos = ks + t
            i_ok = k_ok & (ipos >= 0) & (ipos < n)
            id_mask = i_ok[:, None] & d_ok[None, :]
            hit(COUNTS, P_T_REPEAT, t > t_lo, COUNT_PATHS)
            hits(COUNTS, P_I_OUTSIDE, k_ok & ~i_ok, COUNT_PATHS)
            i_start = r0 + t
            q_ptrs = q_base + i_start * stride_qn + q_offs
            dot_ = rows_at(do_base, i_start, do_offs, stride_don, id_mask)
            lse = tl.load(LSE + row_base + i_start + kr, mask=i_ok, other=0.0)
            lse_lo = tl.load(LSE_LO + row_base + i_start + kr, mask=i_ok, other=0.0)
            delta = tl.load(DELTA + row_base + i_start + kr, mask=i_ok, other=0.0)
            if DET:  # a = k2 x q per chunk, the forward's operand
                qt_1 = tl.load(q_ptrs + q_sh1, mask=id_mask, other=0.0).to(tl.float32)
                qt_2 = tl.load(q_ptrs + q_sh2, mask=id_mask, other=0.0).to(tl.float32)
                k2t_1, k2t_2 = permuted(k2t, d, sh1, sh2)
                a = cross(k2t_1, k2t_2, qt_1, qt_2).to(dt)
            else:
                qt = tl.load(q_ptrs, mask=id_mask, other=0.0)
                a = (k2t.to(tl.float32) * qt.to(tl.float32)).to(dt)
            bo = (v2t.to(tl.float32) * dot_.to(tl.float32)).to(dt)
            j_lo = tl.maximum(k0 + t - L1, 0)
            j_hi = tl.minimum(k_last + t + R1, n - 1)
            x = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
            y = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
            for j0 in range(j_lo, j_hi + 1, BLOCK_J):
                p, ds, k1b, v1b = recomputed_j_block(
                    j0, jr, j_lo, j_hi, n, d_ok, i_ok, ipos, L1, R1, a, bo, lse, lse_lo, delta, scale,
                    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, COUNTS,
                    P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS,
                )  # fmt: skip
                x = mma(ds.to(dt), k1b, x, INPUT_PRECISION, UPCAST)
                y = mma(p.to(dt), v1b, y, INPUT_PRECISION, UPCAST)
            if DET:  # dk2 += q x x per chunk
                dk2 += qt_1 * channels_at(x, d, sh2) - qt_2 * channels_at(x, d, sh1)
            else:
                dk2 += x * qt.to(tl.float32)
            dv2 += y * dot_.to(tl.float32)

    store_kv_tile(DK2, DV2, dk2, dv2, scale, b, g, r0, kr, d, kd_mask, stride_gb, stride_gn, stride_gh)
