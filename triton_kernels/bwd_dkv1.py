r"""Backward kernel for dk1 and dv1: one program owns BLOCK_J k1/v1 positions of one kv head.

The program walks the queries i whose window J(i) meets its tile in query blocks; for each,
the query heads of the kv head's group in head blocks, and for each head block the k2 windows
K(i) in k steps (GQA: the kv gradient is the sum over the group). One step handles BLOCK_C
columns c, each a pair ((i, h), k) (issue 24: the heads on the products' M / K dimension
instead of a loop over heads with 16-wide products). Two column modes, picked per shape by the
host (host.column_mode, configs.column_mode):

    HEADS      columns = BLOCK_C / BLOCK_H queries x BLOCK_H heads at one k
               (Hq / Hkv = 64, BLOCK_C = 128: 2 queries x 64 heads); the k steps walk the
               union of the block's K(i), a column masked where k is outside its own K(i)
    POSITIONS  columns = BLOCK_C positions k of one query and one head (no GQA)

With the pair operand bq[c] = q[i, h] * k2[k] and bo[c] = dout[i, h] * v2[k] (CONTRACT §1),

    S^T   = bq @ k1^T,  P^T = exp(min((S^T * scale - lse[i, h]) - lse_lo[i, h], 0))   [BLOCK_C, BLOCK_J]
    dP^T  = bo @ v1^T,  dA^T = P^T * (dP^T - Delta[i, h])
    dk1  += dA @ bq   (times scale at the end),   dv1 += P @ bo

In each mode one factor of bq is a tile X [BLOCK_C, D] (HEADS: q of the heads; POSITIONS: k2
of the positions) and the other a row y shared by every column (HEADS: k2[k]; POSITIONS:
q[i, h]), so the row folds into the kv side and into the result:

    S^T  = X @ (k1 * y)^T          dk1^T += y[:, None] * (X^T @ dA^T)

and likewise dP^T = Xo @ (v1 * yo)^T, dv1^T += yo[:, None] * (Xo^T @ P^T) with dout and v2.
The tiles X are loaded operands (shared memory on sm_90: no register copies of a formed bq; in
HEADS loaded once per head block for the whole k loop), the products are BLOCK_C x BLOCK_J x D
(logits, dP) and D x BLOCK_J x BLOCK_C (dk1, dv1): with BLOCK_C = 128 on 8 warps no warp
group recomputes another's logits (a 64-row product on 8 warps would, twice the work). The
gradients accumulate transposed, [D, BLOCK_J], and are stored once. Rows of S^T are the
columns (i, h), so lse, lse_lo and Delta are per row.

Determinant logits (CONTRACT §8, bq = k2 x q per chunk, the forward's operand) take POSITIONS
columns (X = k2, y = q[i, h]; with HEADS columns they spill at every tile tried). det(q, k1, k2)
is cyclic, so the logits are -(X @ (k1 x y)^T), two products on the kv sides k1[s(d)] * y[s(s(d))]
and k1[s(s(d))] * y[s(d)] (k1 resident at both permuted channel orders, s(d) the next channel
of d's chunk), and dk1 = dA @ (X x y) is two products with X at its permuted orders
X_1 = X[:, s(d)], X_2 = X[:, s(s(d))]:

    dk1^T += y_2[:, None] * (X_1^T @ dA^T) - y_1[:, None] * (X_2^T @ dA^T)

Masks: rows j outside J(i) (in_band), columns whose k lies outside K(i) (past its end or past
the sequence; zero-filled), whose head lies past the group or whose query lies past the tile's
last query (HEADS; zero-filled).
For query i the window K(i) is a band independent of j; the sum over all tiles of the queries
visited is (w1 + BLOCK_J - 1) / w1 of the useful work. Packed sequences as in fwd.py.
Each program writes only its own rows: no atomics, deterministic.
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import hit
from .kv import head_rows, row_block_ptrs
from .mask import in_band
from .operand import chunk_shifts, mma
from .softmax import recomputed_block
from .tiles import kv_tile, kv_tile_rows, store_kv_tile

#   i_repeat / h_repeat / k_repeat   a second trip of the loop over query blocks / head blocks / k-blocks
#   i_tail                          (HEADS) a query block with columns past the tile's last query
#   h_tail                          (HEADS) a head block with columns past the group's last head
#   k_tail                          a k step with columns whose k lies outside their K(i)
#   k_past_n                        (POSITIONS) a k-block with columns past N
#   rows32                          (HEADS, ROWS32) a k step reading k2 / v2 at 32-bit offsets
P_I_REPEAT, P_I_TAIL, P_H_REPEAT, P_H_TAIL, P_K_REPEAT, P_K_TAIL, P_K_PAST_N, P_ROWS32 = coverage.slots(
    ("bwd_dkv1",), "i_repeat", "i_tail", "h_repeat", "h_tail", "k_repeat", "k_tail", "k_past_n", "rows32"
)


@triton.jit
def column_tile(at, rows, chan, ok, d_ok):
    """X [BLOCK_C, BLOCK_D]: the rows at offsets `rows` [BLOCK_C] (int64) from `at`, channel
    offsets `chan`, zero where the column is not `ok` or past D."""
    return tl.load(at + (rows[:, None] + chan[None, :]), mask=ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def shared_row(at, first, stride_n, chan, d_ok):
    """y [BLOCK_D] in float32: row `first` (stride stride_n from `at`), channel offsets `chan`."""
    return tl.load(at + tl.cast(first, tl.int64) * stride_n + chan, mask=d_ok, other=0.0).to(tl.float32)


@triton.jit
def folded(kv, y, dt):
    """kv * y (kv [BLOCK_J, BLOCK_D] rows times the shared row y) in dtype dt: a product's kv side."""
    return (kv.to(tl.float32) * y[None, :]).to(dt)


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
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, HEADS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
    X_WHERE_USED: tl.constexpr = False, ROWS32: tl.constexpr = False,
):  # fmt: skip
    # X_WHERE_USED (a config's choice, determinant logits): the permuted k2 tiles of dk1 loaded
    # where used instead of with the k-block's tiles. ROWS32 (a config's choice, HEADS): the k2 / v2
    # rows of a query block at 32-bit offsets from the block's first (below).
    # Queries per query block and positions per k-block: HEADS, BLOCK_C / BLOCK_H queries of
    # BLOCK_H heads at one k; POSITIONS, BLOCK_C positions of one head and one query.
    BLOCK_I: tl.constexpr = BLOCK_C // BLOCK_H if HEADS else 1
    BLOCK_KK: tl.constexpr = 1 if HEADS else BLOCK_C
    HB: tl.constexpr = BLOCK_H if HEADS else 1  # heads per head block
    start, n, j0 = kv_tile(CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2, BLOCK_J, BLOCK_D, VARLEN, DET, COUNT_PATHS)
    if VARLEN:  # a batched grid has no tile past its sequence
        if j0 >= n:
            return
    dt = K1.dtype.element_ty
    g, b, r0, jr, j_ok = kv_tile_rows(start, n, j0, BLOCK_J)
    js = j0 + jr
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    c = tl.arange(0, BLOCK_C)
    jd_mask = j_ok[:, None] & d_ok[None, :]
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    k1_ptrs = row_block_ptrs(K1, b, g, r0, stride_k1b, stride_k1n, stride_k1h, stride_k1d, jr, d)
    v1_ptrs = row_block_ptrs(V1, b, g, r0, stride_v1b, stride_v1n, stride_v1h, stride_v1d, jr, d)
    v1t = tl.load(v1_ptrs, mask=jd_mask, other=0.0)  # resident for the whole program
    if DET:  # k1 at its two permuted channel orders (k1 x y per chunk)
        k1t = tl.load(k1_ptrs + (sh1 * stride_k1d)[None, :], mask=jd_mask, other=0.0)
        k1u = tl.load(k1_ptrs + (sh2 * stride_k1d)[None, :], mask=jd_mask, other=0.0)
    else:
        k1t = tl.load(k1_ptrs, mask=jd_mask, other=0.0)
        k1u = k1t

    k2_base = head_rows(K2, b, g, start, stride_k2b, stride_k2h, stride_k2n)
    v2_base = head_rows(V2, b, g, start, stride_v2b, stride_v2h, stride_v2n)
    q_base = head_rows(Q, b, g * GROUP, start, stride_qb, stride_qh, stride_qn)
    do_base = head_rows(DOUT, b, g * GROUP, start, stride_dob, stride_doh, stride_don)
    row_base = b * stride_lb + (g * GROUP) * stride_lh + start
    q_ch, k2_ch, v2_ch, do_ch = d * stride_qd, d * stride_k2d, d * stride_v2d, d * stride_dod
    q_1, q_2 = (d + sh1) * stride_qd, (d + sh2) * stride_qd  # (determinant: the channel orders s, s(s))
    k2_1, k2_2 = (d + sh1) * stride_k2d, (d + sh2) * stride_k2d
    tl.static_assert(not (HEADS and DET), "determinant logits take POSITIONS columns (host.column_mode)")

    # j is in J(i) = [i - L1, i + R1]  <=>  i is in [j - R1, j + L1].
    j_last = tl.minimum(j0 + BLOCK_J - 1, n - 1)
    i_lo = tl.maximum(j0 - R1, 0)
    i_hi = tl.minimum(j_last + L1, n - 1)
    n_hblk = tl.cdiv(GROUP, HB)
    if HEADS:  # column c: query i0 + ii, head h0 + hh
        ii = c // HB
        hh = c % HB
    else:  # column c: position k0 + c; one query i0 and head h0
        ii = c * 0
        hh = c * 0

    dk1 = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)  # dk1^T and dv1^T
    dv1 = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)
    for i0 in range(i_lo, i_hi + 1, BLOCK_I):
        ic = i0 + ii
        i_ok = ic <= i_hi
        i_last = tl.minimum(i0 + BLOCK_I - 1, i_hi)
        k_lo = tl.maximum(i0 - L2, 0)  # the union of the block's K(i)
        k_hi = tl.minimum(i_last + R2, n - 1)
        hit(COUNTS, P_I_REPEAT, i0 > i_lo, COUNT_PATHS)
        hit(COUNTS, P_I_TAIL, i0 + BLOCK_I - 1 > i_hi, COUNT_PATHS)
        for hb in range(0, n_hblk):
            h0 = hb * HB
            heads = h0 + hh
            h_ok = heads < GROUP
            hit(COUNTS, P_H_REPEAT, hb > 0, COUNT_PATHS)
            hit(COUNTS, P_H_TAIL, h0 + HB > GROUP, COUNT_PATHS)
            # The block's first query row (64-bit): its columns' rows (HEADS) or shared rows.
            q_at = q_base + tl.cast(i0, tl.int64) * stride_qn
            do_at = do_base + tl.cast(i0, tl.int64) * stride_don
            if HEADS:
                ok = i_ok & h_ok
                # The (query, head) tiles of the block: the left operands for the whole k loop
                # (32-bit offsets inside the block).
                xq = column_tile(q_at, ii * stride_qn + heads * stride_qh, q_ch, ok, d_ok)
                xo = column_tile(do_at, ii * stride_don + heads * stride_doh, do_ch, ok, d_ok)
            else:
                # The rows of (i0, h0) that every column shares.
                yq = shared_row(q_at, h0, stride_qh, q_ch, d_ok)
                yo = shared_row(do_at, h0, stride_doh, do_ch, d_ok)
                if DET:
                    yq1 = shared_row(q_at, h0, stride_qh, q_1, d_ok)
                    yq2 = shared_row(q_at, h0, stride_qh, q_2, d_ok)
            # Per column (query, head): the forward's statistics (rows of S^T).
            stat = row_base + heads.to(tl.int64) * stride_lh + ic
            lse = tl.load(LSE + stat, mask=h_ok & i_ok, other=0.0)
            lse_lo = tl.load(LSE_LO + stat, mask=h_ok & i_ok, other=0.0)
            delta = tl.load(DELTA + stat, mask=h_ok & i_ok, other=0.0)
            # ROWS32: the k2 / v2 rows at 32-bit offsets from the k range's first, at most L2 + R2 +
            # BLOCK_I rows, which the launcher checks fit (host.k_rows_fit; else POSITIONS). A 64-bit
            # k0 * stride per step costs registers that sm_90's 64-wide tile does not have (24 B of
            # spills); on sm_80's 32-wide tile it is the 32-bit form that spills (24 B).
            k2_at = k2_base + tl.cast(k_lo, tl.int64) * stride_k2n
            v2_at = v2_base + tl.cast(k_lo, tl.int64) * stride_v2n
            for k0 in range(k_lo, k_hi + 1, BLOCK_KK):
                hit(COUNTS, P_K_REPEAT, k0 > k_lo, COUNT_PATHS)
                if HEADS:
                    # k0 in K(i) of the column's query (the block's queries have shifted windows)
                    hit(COUNTS, P_K_TAIL, (k0 < i_last - L2) | (k0 > i0 + R2), COUNT_PATHS)
                    col_ok = in_band(ok, k0, ic, L2, R2)
                    if ROWS32:
                        hit(COUNTS, P_ROWS32, True, COUNT_PATHS)
                        ys = shared_row(k2_at + (k0 - k_lo) * stride_k2n, 0, stride_k2n, k2_ch, d_ok)
                        yvv = shared_row(v2_at + (k0 - k_lo) * stride_v2n, 0, stride_v2n, v2_ch, d_ok)
                    else:
                        ys = shared_row(k2_base, k0, stride_k2n, k2_ch, d_ok)
                        yvv = shared_row(v2_base, k0, stride_v2n, v2_ch, d_ok)
                    xs, xv = xq, xo
                else:
                    hit(COUNTS, P_K_TAIL, k0 + BLOCK_KK - 1 > k_hi, COUNT_PATHS)
                    hit(COUNTS, P_K_PAST_N, k0 + BLOCK_KK > n, COUNT_PATHS)
                    col_ok = k0 + c <= k_hi
                    k_rows = (k0 + c).to(tl.int64)
                    xk = column_tile(k2_base, k_rows * stride_k2n, k2_ch, col_ok, d_ok)
                    xv = column_tile(v2_base, k_rows * stride_v2n, v2_ch, col_ok, d_ok)
                    xs, ys, yvv = xk, yq, yo
                    if DET:
                        if not X_WHERE_USED:  # the k2 tile at its two permuted channel orders (dk1 below)
                            x1 = column_tile(k2_base, k_rows * stride_k2n, k2_1, col_ok, d_ok)
                            x2 = column_tile(k2_base, k_rows * stride_k2n, k2_2, col_ok, d_ok)
                # [columns, j]: j in the window J(i) of the column's query, k in its K(i).
                in_win = in_band(col_ok[:, None] & j_ok[None, :], js[None, :], ic[:, None], L1, R1)
                if DET:
                    # X @ (-(k1 x y))^T, k1 x y = k1[s(d)] y[s(s(d))] - k1[s(s(d))] y[s(d)], as two
                    # products: each kv side one rounding of an exact product, the difference in float32.
                    s = mma(xs, tl.trans(folded(k1t, -yq2, dt)), tl.zeros([BLOCK_C, BLOCK_J], tl.float32),
                            INPUT_PRECISION, UPCAST)  # fmt: skip
                    s = mma(xs, tl.trans(folded(k1u, yq1, dt)), s, INPUT_PRECISION, UPCAST)
                else:
                    s = mma(xs, tl.trans(folded(k1t, ys, dt)), tl.zeros([BLOCK_C, BLOCK_J], tl.float32),
                            INPUT_PRECISION, UPCAST)  # fmt: skip
                p, ds = recomputed_block(
                    s, in_win, xv, folded(v1t, yvv, dt), lse, lse_lo, delta, scale, True, INPUT_PRECISION, UPCAST
                )
                ds = ds.to(dt)
                zero = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)
                if DET:  # bq = X x y: dk1 = y_2 * (dA @ X_1) - y_1 * (dA @ X_2)
                    if X_WHERE_USED:  # loaded here, one live at a time (less shared memory, more registers)
                        x1 = column_tile(k2_base, k_rows * stride_k2n, k2_1, col_ok, d_ok)
                    dk1 += yq2[:, None] * mma(tl.trans(x1), ds, zero, INPUT_PRECISION, UPCAST)
                    if X_WHERE_USED:
                        x2 = column_tile(k2_base, k_rows * stride_k2n, k2_2, col_ok, d_ok)
                    dk1 -= yq1[:, None] * mma(tl.trans(x2), ds, zero, INPUT_PRECISION, UPCAST)
                else:
                    dk1 += ys[:, None] * mma(tl.trans(xs), ds, zero, INPUT_PRECISION, UPCAST)
                dv1 += yvv[:, None] * mma(tl.trans(xv), p.to(dt), zero, INPUT_PRECISION, UPCAST)

    dk1, dv1 = tl.trans(dk1), tl.trans(dv1)
    store_kv_tile(DK1, DV1, dk1, dv1, scale, b, g, r0, jr, d, jd_mask, stride_gb, stride_gn, stride_gh)
