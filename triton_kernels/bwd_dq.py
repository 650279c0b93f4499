r"""Backward kernel for dq: one program owns the dq rows of one forward tile.

Same tiling and loop order as the forward (fwd.py): rows are (position, query head) pairs,
the outer loop runs over the offset u = i - k, the inner loop over j-blocks. With
dA = P * (dP - Delta) (CONTRACT §1):

    a   = q * k2[i - u],  b = dout * v2[i - u]          built once per u
    z   = a @ k1^T * scale                               exactly the forward's operations
    P   = exp(min((z - lse) - lse_lo, 0))                natural units, clamped (softmax.py)
    dP  = b @ v1^T
    x  += dA @ k1[j-block]
    dq += x * k2[i - u]                                   once per u; times scale at the end

Determinant logits: a = k2[i - u] x q as in the forward, and dq += x x k2[i - u] (the chunkwise
cross product, x's channels permuted in registers once per u). Packed sequences as in fwd.py.
Each program writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from .kv import query_rows, rows_at
from .mask import j_window_mask
from .operand import chunk_shifts, cross, mma, pair_operand, permuted
from .softmax import recomputed_block
from .tiles import P_J_PAST_N, P_J_REPEAT, P_J_TAIL, j_block, offset_rows, query_tile, query_tile_kv, query_tile_loops


@triton.jit
def recomputed_j_block(
    j0, jr, j_lo, j_hi, n, d_ok, rows_ok, pos, L1, R1, a, bo, lse, lse_lo, delta, scale,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, COUNTS,
    J_REPEAT: tl.constexpr, J_TAIL: tl.constexpr, J_PAST_N: tl.constexpr, BLOCK_J: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """One j-block of the backward's query-side loop (bwd_dq, bwd_dkv2): rows at positions `pos`
    (valid where rows_ok) with operands a (logits) and bo (dP) against the k1/v1 rows j0 + jr
    of [j_lo, j_hi]; lse, lse_lo and delta per row. Returns (P, dA, k1b, v1b)."""
    js, j_ok, jd_mask = j_block(
        j0, jr, j_lo, j_hi, n, d_ok, COUNTS, J_REPEAT, J_TAIL, J_PAST_N, BLOCK_J, False, COUNT_PATHS
    )
    k1b = rows_at(k1_base, j0, k1_offs, stride_k1n, jd_mask)
    v1b = rows_at(v1_base, j0, v1_offs, stride_v1n, jd_mask)
    s = mma(a, tl.trans(k1b), tl.zeros([a.shape[0], BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
    in_win = j_window_mask(rows_ok, pos, j_ok, js, L1, R1)
    p, ds = recomputed_block(s, in_win, bo, v1b, lse, lse_lo, delta, scale, True, INPUT_PRECISION, UPCAST)
    return p, ds, k1b, v1b


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
    start, n, p0, g, b, h0, rp, rh, pos, row_ok = query_tile(
        CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2, BLOCK_M, BLOCK_H, BLOCK_D, VARLEN, DET, COUNT_PATHS
    )
    if VARLEN:  # a batched grid has no tile past its sequence
        if p0 >= n:
            return
    dt = K1.dtype.element_ty
    r0 = p0.to(tl.int64) + start  # the tile's first row
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)

    q_ptrs = query_rows(Q, b, h0, r0, rp, rh, d, stride_qb, stride_qn, stride_qh, stride_qd)
    do_ptrs = query_rows(DOUT, b, h0, r0, rp, rh, d, stride_dob, stride_don, stride_doh, stride_dod)
    row_offs = b * stride_lb + h0 * stride_lh + r0 + (rh * stride_lh + rp)
    lse = tl.load(LSE + row_offs, mask=row_ok, other=0.0)
    lse_lo = tl.load(LSE_LO + row_offs, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_offs, mask=row_ok, other=0.0)

    k1_base, k1_offs, v1_base, v1_offs, k2_base, k2_offs, v2_base, v2_offs = query_tile_kv(
        K1, K2, V1, V2, b, g, start, rp, jr, d,
        stride_k1b, stride_k1n, stride_k1h, stride_k1d, stride_k2b, stride_k2n, stride_k2h, stride_k2d,
        stride_v1b, stride_v1n, stride_v1h, stride_v1d, stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    )  # fmt: skip
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_M // BLOCK_H)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for u in range(u_lo, u_hi + 1):
        k_ok, kd_mask = offset_rows(pos, u, row_ok, n, d_ok, u_lo, COUNTS, COUNT_PATHS)
        k2u = rows_at(k2_base, r0 - u, k2_offs, stride_k2n, kd_mask)
        v2u = rows_at(v2_base, r0 - u, v2_offs, stride_v2n, kd_mask)
        # q and dout are re-read (from cache) per u rather than held in registers.
        q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
        a = pair_operand(q, k2u, d, sh1, sh2, dt, DET)
        do = tl.load(do_ptrs, mask=kd_mask, other=0.0)
        bo = (do.to(tl.float32) * v2u.to(tl.float32)).to(dt)
        x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            p, ds, k1b, v1b = recomputed_j_block(
                j0, jr, j_lo, j_hi, n, d_ok, k_ok, pos, L1, R1, a, bo, lse, lse_lo, delta, scale,
                k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, COUNTS,
                P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS,
            )  # fmt: skip
            x = mma(ds.to(dt), k1b, x, INPUT_PRECISION, UPCAST)
        if DET:  # dq += x x k2 per chunk
            k2_1, k2_2 = permuted(k2u, d, sh1, sh2)
            x_1, x_2 = permuted(x, d, sh1, sh2)
            dq += cross(x_1, x_2, k2_1, k2_2)
        else:
            dq += x * k2u.to(tl.float32)

    dq_ptrs = query_rows(DQ, b, h0, r0, rp, rh, d, stride_dqb, stride_dqn, stride_dqh, 1)
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
