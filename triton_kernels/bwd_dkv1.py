r"""Backward kernel for dk1 and dv1: one program owns BLOCK_J k1/v1 positions of one kv head.

The program walks the queries i whose window J(i) meets its tile, one at a time; for each, the
query heads of the kv head's group in head blocks, and for each head block the k2 window K(i)
in k-blocks (GQA: the kv gradient is the sum over the group). One step handles BLOCK_C
columns c, each a pair (k, head h) (issue 24: the heads on the GEMMs' M / K dimension instead
of a loop over heads with 16-wide products). Two column modes, picked per shape by the host
(HEADS):

    HEADS      columns = BLOCK_C heads of the group at one k      (Hq / Hkv >= 64: 64 heads)
    POSITIONS  columns = BLOCK_C positions k of one head          (no GQA: 64 k's)

With the pair operand bq[c] = q[i, h] * k2[k] and bo[c] = dout[i, h] * v2[k] (CONTRACT §1),

    S^T   = bq @ k1^T,  P^T = exp(min((S^T * scale - lse[i, h]) - lse_lo[i, h], 0))   [BLOCK_C, BLOCK_J]
    dP^T  = bo @ v1^T,  dA^T = P^T * (dP^T - Delta[i, h])
    dk1  += dA @ bq   (times scale at the end),   dv1 += P @ bo

In each mode one factor of bq is a tile X [BLOCK_C, D] (HEADS: q of the heads; POSITIONS: k2
of the positions) and the other a row y shared by every column (HEADS: k2[k]; POSITIONS:
q[i, h]), so the row folds into the kv side and into the result:

    S^T  = X @ (k1 * y)^T          dk1^T += y[:, None] * (X^T @ dA^T)

and likewise dP^T = Xo @ (v1 * yo)^T, dv1^T += yo[:, None] * (Xo^T @ P^T) with dout and v2.
The tiles X are loaded operands (shared memory on sm_90: no register copies of a formed bq),
the products are BLOCK_C x BLOCK_J x D (logits, dP) and D x BLOCK_J x BLOCK_C (dk1, dv1), the
gradients accumulate transposed, [D, BLOCK_J], and are stored once. Rows of S^T are the
columns (i, h), so lse, lse_lo and Delta are per row.

Determinant logits (CONTRACT §8, bq = k2 x q per chunk, the forward's operand): det(q, k1, k2)
is cyclic, so the logits are X @ (sign * (k1 x y))^T, sign +1 with X = q (HEADS) and -1 with
X = k2 (POSITIONS); the cross product needs k1 at its two permuted channel orders (resident)
and y at both (loads at shifted channels). dk1 = dA @ (k2 x q) is two products with X at its
two permuted orders X_1 = X[:, s(d)], X_2 = X[:, s(s(d))]:

    dk1^T += a[:, None] * (X_1^T @ dA^T) + b[:, None] * (X_2^T @ dA^T),
    (a, b) = (-y_2, y_1) (HEADS) or (y_2, -y_1) (POSITIONS)

Masks: rows j outside J(i) (in_band), columns whose k lies outside K(i) (POSITIONS: past its
end or past the sequence; zero-filled) or whose head lies past the group (HEADS; zero-filled).
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
from .operand import chunk_shifts, cross, mma
from .softmax import recomputed_block
from .tiles import kv_tile, kv_tile_rows, store_kv_tile

#   i_repeat / h_repeat / k_repeat   a second trip of the loop over queries i / head blocks / k-blocks
#   h_tail                          (HEADS) a head block with columns past the group's last head
#   k_tail / k_past_n               (POSITIONS) a k-block with columns past K(i) / past N
P_I_REPEAT, P_H_REPEAT, P_H_TAIL, P_K_REPEAT, P_K_TAIL, P_K_PAST_N = coverage.slots(
    ("bwd_dkv1",), "i_repeat", "h_repeat", "h_tail", "k_repeat", "k_tail", "k_past_n"
)


@triton.jit
def column_tile(at, first, c, stride_n, chan, ok, d_ok):
    """X [BLOCK_C, BLOCK_D]: rows first + c (stride stride_n from `at`), channel offsets `chan`,
    zero where the column is not `ok` or past D."""
    rows = tl.cast(first, tl.int64) * stride_n
    return tl.load(at + rows + (c[:, None] * stride_n + chan[None, :]), mask=ok[:, None] & d_ok[None, :], other=0.0)


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
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, HEADS: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    # Heads per head block and positions per k-block: (BLOCK_C, 1) in HEADS mode, else (1, BLOCK_C).
    BLOCK_H: tl.constexpr = BLOCK_C if HEADS else 1
    BLOCK_KK: tl.constexpr = 1 if HEADS else BLOCK_C
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
    q_1, q_2 = (d + sh1) * stride_qd, (d + sh2) * stride_qd
    k2_1, k2_2 = (d + sh1) * stride_k2d, (d + sh2) * stride_k2d
    sign = -1.0  # determinant: the logits' kv side is sign * (k1 x y)
    if HEADS:
        sign = 1.0

    # j is in J(i) = [i - L1, i + R1]  <=>  i is in [j - R1, j + L1].
    j_last = tl.minimum(j0 + BLOCK_J - 1, n - 1)
    i_lo = tl.maximum(j0 - R1, 0)
    i_hi = tl.minimum(j_last + L1, n - 1)
    n_hblk = tl.cdiv(GROUP, BLOCK_H)

    dk1 = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)  # dk1^T and dv1^T
    dv1 = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)
    for i in range(i_lo, i_hi + 1):
        i64 = tl.cast(i, tl.int64)
        row_in = in_band(j_ok, js, i, L1, R1)
        k_lo = tl.maximum(i - L2, 0)
        k_hi = tl.minimum(i + R2, n - 1)
        q_at, do_at = q_base + i64 * stride_qn, do_base + i64 * stride_don
        hit(COUNTS, P_I_REPEAT, i > i_lo, COUNT_PATHS)
        for hb in range(0, n_hblk):
            h0 = hb * BLOCK_H
            hit(COUNTS, P_H_REPEAT, hb > 0, COUNT_PATHS)
            if HEADS:
                hit(COUNTS, P_H_TAIL, h0 + BLOCK_H > GROUP, COUNT_PATHS)
                h_ok = h0 + c < GROUP
                heads = h0 + c
                # The head tiles of query i: the logits' / dP's left operands for the whole k loop.
                xq = column_tile(q_at, h0, c, stride_qh, q_ch, h_ok, d_ok)
                xo = column_tile(do_at, h0, c, stride_doh, do_ch, h_ok, d_ok)
                if DET:
                    xq1 = column_tile(q_at, h0, c, stride_qh, q_1, h_ok, d_ok)
                    xq2 = column_tile(q_at, h0, c, stride_qh, q_2, h_ok, d_ok)
            else:
                h_ok = c >= 0
                heads = h0 + c * 0
                # The rows of (i, h) that every column shares.
                yq = shared_row(q_at, h0, stride_qh, q_ch, d_ok)
                yo = shared_row(do_at, h0, stride_doh, do_ch, d_ok)
                if DET:
                    yq1 = shared_row(q_at, h0, stride_qh, q_1, d_ok)
                    yq2 = shared_row(q_at, h0, stride_qh, q_2, d_ok)
            # Per column (i, head): the forward's statistics (rows of S^T).
            stat = row_base + heads.to(tl.int64) * stride_lh + i64
            lse = tl.load(LSE + stat, mask=h_ok, other=0.0)
            lse_lo = tl.load(LSE_LO + stat, mask=h_ok, other=0.0)
            delta = tl.load(DELTA + stat, mask=h_ok, other=0.0)
            for k0 in range(k_lo, k_hi + 1, BLOCK_KK):
                hit(COUNTS, P_K_REPEAT, k0 > k_lo, COUNT_PATHS)
                if HEADS:
                    col_ok = h_ok
                    yk = shared_row(k2_base, k0, stride_k2n, k2_ch, d_ok)
                    yv = shared_row(v2_base, k0, stride_v2n, v2_ch, d_ok)
                    if DET:
                        y1 = shared_row(k2_base, k0, stride_k2n, k2_1, d_ok)
                        y2 = shared_row(k2_base, k0, stride_k2n, k2_2, d_ok)
                        # bq = y x X: dk1 = y_1 * (dA @ X_2) - y_2 * (dA @ X_1)
                        ys, x1, x2, a, bb = yk, xq1, xq2, -y2, y1
                    else:
                        ys, xs = yk, xq
                    xv, yvv = xo, yv
                else:
                    hit(COUNTS, P_K_TAIL, k0 + BLOCK_KK - 1 > k_hi, COUNT_PATHS)
                    hit(COUNTS, P_K_PAST_N, k0 + BLOCK_KK > n, COUNT_PATHS)
                    col_ok = k0 + c <= k_hi
                    xk = column_tile(k2_base, k0, c, stride_k2n, k2_ch, col_ok, d_ok)
                    xv = column_tile(v2_base, k0, c, stride_v2n, v2_ch, col_ok, d_ok)
                    yvv = yo
                    if DET:
                        # bq = X x y: dk1 = y_2 * (dA @ X_1) - y_1 * (dA @ X_2)
                        x1 = column_tile(k2_base, k0, c, stride_k2n, k2_1, col_ok, d_ok)
                        x2 = column_tile(k2_base, k0, c, stride_k2n, k2_2, col_ok, d_ok)
                        ys, y1, y2, a, bb = yq, yq1, yq2, yq2, -yq1
                    else:
                        ys, xs = yq, xk
                in_win = col_ok[:, None] & row_in[None, :]
                if DET:
                    # X @ (sign * (k1 x y))^T: k1 x y = k1[s(d)] y[s(s(d))] - k1[s(s(d))] y[s(d)]
                    kq = (sign * cross(k1t.to(tl.float32), k1u.to(tl.float32), y1[None, :], y2[None, :])).to(dt)
                    if HEADS:
                        xl = xq
                    else:
                        xl = xk
                else:
                    kq = folded(k1t, ys, dt)
                    xl = xs
                s = mma(xl, tl.trans(kq), tl.zeros([BLOCK_C, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
                p, ds = recomputed_block(
                    s, in_win, xv, folded(v1t, yvv, dt), lse, lse_lo, delta, scale, True, INPUT_PRECISION, UPCAST
                )
                ds = ds.to(dt)
                zero = tl.zeros([BLOCK_D, BLOCK_J], tl.float32)
                if DET:
                    dk1 += a[:, None] * mma(tl.trans(x1), ds, zero, INPUT_PRECISION, UPCAST)
                    dk1 += bb[:, None] * mma(tl.trans(x2), ds, zero, INPUT_PRECISION, UPCAST)
                else:
                    dk1 += ys[:, None] * mma(tl.trans(xs), ds, zero, INPUT_PRECISION, UPCAST)
                dv1 += yvv[:, None] * mma(tl.trans(xv), p.to(dt), zero, INPUT_PRECISION, UPCAST)

    store_kv_tile(DK1, DV1, tl.trans(dk1), tl.trans(dv1), scale, b, g, r0, jr, d, jd_mask, stride_gb, stride_gn, stride_gh)
