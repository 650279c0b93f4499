r"""Backward kernel for dq alone, the split path's query side (host.bwd_path; bwd_dkv2.py has dk2 / dv2).

The fused kernel (bwd_dqkv2.py) computes dq, dk2 and dv2 in four products per j-block but holds
three [rows, D] float32 tiles, which at D = 128 leaves it 16-row sequence tiles on every arch and
32-row head-packed tiles on sm_100 (the 64-row tile spills there). Where the model ranks two
kernels with wider tiles above it (host.bwd_path: sequence tiles on sm_90, every 16-bit tiling on
sm_100), this kernel takes dq with the forward's 64-row tiles (three products per j-block, one
[rows, D] accumulator besides dq) and bwd_dkv2.py takes dk2 / dv2 over k rows.

Same tiling and loop order as the forward (fwd.py): rows are (position, query head) pairs, the
outer loop runs over the offset u = i - k, the inner loop over j-blocks. With
dA = P * (dP - Delta) (CONTRACT §1):

    a   = q * k2[i - u],  bo = dout * v2[i - u]          built once per u
    P, dA as in bwd_dqkv2.recomputed_j_block             (the same j-block, shared)
    x  += dA @ k1[j-block]
    dq += x * k2[i - u]                                   once per u; times scale at the end

Determinant logits: a = k2[i - u] x q as in the forward, and dq += x x k2[i - u] (the chunkwise
cross product, x's channels permuted in registers once per u). Packed sequences as in fwd.py.
Each program writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from . import coverage, tiles
from .bwd_dqkv2 import recomputed_j_block
from .kv import query_rows, rows_at
from .operand import chunk_shifts, cross, mma, pair_operand, permuted
from .tiles import offset_rows, query_tile, query_tile_kv, query_tile_loops

# The query tile's pieces (tiles.py) count into the slots they have in fwd / bwd_dqkv2; this
# kernel registers the same names in the same order, so they land at the same indices.
_QUERY_TILE_SLOTS = coverage.slots(
    ("bwd_dq",), "u_repeat", "k_outside", "j_repeat", "j_tail", "j_past_n", "head_packed", "head_tail"
)
assert _QUERY_TILE_SLOTS == (
    tiles.P_U_REPEAT, tiles.P_K_OUTSIDE, tiles.P_J_REPEAT, tiles.P_J_TAIL, tiles.P_J_PAST_N, tiles.P_HEAD_PACKED,
    tiles.P_HEAD_TAIL,
)  # fmt: skip


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
        a = pair_operand(tl.load(q_ptrs, mask=kd_mask, other=0.0), k2u, d, sh1, sh2, dt, DET)
        bo = (tl.load(do_ptrs, mask=kd_mask, other=0.0).to(tl.float32) * v2u.to(tl.float32)).to(dt)
        x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            p, ds, k1b, v1b = recomputed_j_block(
                j0, jr, j_lo, j_hi, n, d_ok, k_ok, pos, L1, R1, a, bo, lse, lse_lo, delta, scale,
                k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, COUNTS,
                tiles.P_J_REPEAT, tiles.P_J_TAIL, tiles.P_J_PAST_N, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS,
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
