r"""Forward kernel: out and lse of 2-simplicial sliding-window attention.

One program owns one query tile (tiles.py: BLOCK_M rows, each a (position, query head) pair of
one kv head group). The loop order avoids building a q * k1_j operand per j. With the offset
u = i - k (k is the k2/v2 position), the k2 row of every query row is a shifted tile, so per u

    a     = q * k2[i - u]                [BLOCK_M, D]   built once per u (operand.pair_operand)
    s     = a @ k1[j-block]^T            [BLOCK_M, BLOCK_J] raw logits (softmax.py: scaled in the exponent)
    y    += softmax-weights @ v1[j-block] [BLOCK_M, D]
    acc  += y * v2[i - u]                 once per u

and the inner loop over j-blocks is two plain tensor-core products on loaded tiles. With
logits="determinant" the operand is the chunkwise cross product a = k2[i - u] x q: the same
product depth, nothing else changes.

Edge and interior j-blocks (issue 23; configs with SPLIT_J, where the registers allow: the
second loop costs some). Per u the j loop is two loops (`attend_tile_offset`):
the edge blocks, which cross a window edge, the sequence's end or a row whose k = i - u lies
outside the sequence, masked as every block once was (window mask, zero-filled rows past j_hi,
which also keeps a neighbouring packed sequence's rows out); then the interior blocks, where
every pair of the block counts for every row of the tile, loaded and softmaxed without a mask
(but the channels' past D). tiles.interior_blocks decides from the tile's scalars which blocks
are interior, never per element. The online softmax takes blocks in any order, so the edge
blocks before and after the interior ones share one loop (one pipeline prologue per u).
Decoding (decode.py) runs every block masked (`attend_offset`: ring slots).

Narrow j-blocks (configs with BLOCK_T): a 128-row tile of two positions spans w1 + 1 j rows,
so its last BLOCK_J block would hold a single row (MMA issued per counted FLOP 1.12 at w1 =
512, BLOCK_J = 64). With BLOCK_T the BLOCK_J loops stop at the last whole block of the tile's
j range (j_wide) and a third, masked loop takes the rest in BLOCK_T-row blocks (1.03).

Folded operands (configs with FOLD, issue 23; head-packed tiles, trilinear logits): the loop
runs over the k2/v2 position k instead of the offset u, k in the union of the tile's k windows
(w2 + BLOCK_P - 1 of them), and a row counts a k when its offset pos - k lies in [-R2, L2]. Every
row of the tile then shares k2[k] and v2[k], so they fold into the kv side of both products:

    s    = q @ (k1[j-block] * k2[k])^T          q loaded once per tile
    acc += softmax-weights @ (v1[j-block] * v2[k])

with one [BLOCK_J, D] elementwise product per operand and block (shared by BLOCK_M rows) in place
of the per-u operand a, the partial sum y and its rescale: one [BLOCK_M, D] float32 tile fewer,
which lets sm_90's 128-row tile take BLOCK_J = 128. Its cost: with BLOCK_P positions a tile visits
w2 + BLOCK_P - 1 values of k where each row counts w2 (1/32 more at BLOCK_P = 2, w2 = 32). The
products round k1 * k2 (v1 * v2) to the operand dtype where the offset loop rounds q * k2: the
same one rounding per factor pair (CONTRACT §5's bounds hold for both). Every block runs masked.

k1/v1 through tensor descriptors (TMA: configs that ask for it, where the launcher finds the
strides aligned, KV_ALIGNED; launch.py): one descriptor per program over the tile's rows [0, j_hi] of
its sequence, so a box zero-fills rows past j_hi (the neighbouring packed sequence included)
and channels past D exactly as the pointer loads' masks do; the window mask is unchanged.

The online softmax over the joint (j, k) window runs in float32 (softmax.py): its running max
in raw logits s, each exponent exp2((s - m) * c) with c = |scale| * log2(e), one multiply per
logit where z = scale * s then (z - m) * log2(e) took two; where scale < 0 the pair operand is
negated (NEG_SCALE: an exact sign flip of s), so the max of s is the max of z.
The epilogue stores lse and its rounding residual lse_lo, float32 [B, Hq, N], for the
backward. Nothing else is saved.

Packed sequences (cu_seqlens, VARLEN): grid axis 2 runs over the sequences, a tile never
crosses one (seqlen.py), and tiles past a sequence's end exit at once.
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import hit
from .kv import block_rows, query_rows, ring_rows, ring_slots, row_descriptor, rows_at, tile_offsets
from .mask import j_window_mask
from .operand import chunk_shifts, mma, pair_operand
from .softmax import exp_factor, final_lse, final_sum, natural_max, offset_rescale, online_block
from .tiles import (
    P_J_EDGE,
    P_J_INTERIOR,
    P_J_PAST_N,
    P_J_REPEAT,
    P_J_TAIL,
    P_U_REPEAT,
    interior_blocks,
    j_block,
    offset_rows,
    query_tile,
    query_tile_kv,
    query_tile_loops,
)  # fmt: skip

#   kv_tma / kv_pointers   k1/v1 j-blocks read through tensor descriptors (TMA) / pointer loads
P_KV_TMA, P_KV_POINTERS = coverage.slots(("fwd",), "kv_tma", "kv_pointers")
#   j_narrow              a narrow j-block (BLOCK_T rows) of the rows past the last whole BLOCK_J block
(P_J_NARROW,) = coverage.slots(("fwd",), "j_narrow")
#   fold                  a program running the FOLD loop (k outer, k2 / v2 folded into k1 / v1)
(P_FOLD,) = coverage.slots(("fwd",), "fold")


@triton.jit
def narrow_trips(j_hi, j_wide, BLOCK_T: tl.constexpr):
    """The narrow loop's BLOCK_T-row blocks: those covering the rows past j_wide up to j_hi."""
    return tl.cdiv(j_hi - j_wide, BLOCK_T)


@triton.jit
def folded(rows, k2k):
    """The block `rows` [BLOCK_J, D] times one k2 (v2) row k2k [D] (float32), rounded back to
    the rows' dtype: the FOLD path's operand."""
    return (rows.to(tl.float32) * k2k[None, :]).to(rows.dtype)


@triton.jit
def masked_block(
    a, y, m_i, l_i, j0, pos, k_ok, jr, j_lo, j_hi, L1, R1, c,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, limit, d_ok, COUNTS,
    J_REPEAT: tl.constexpr, J_TAIL: tl.constexpr, J_EDGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, TMA: tl.constexpr,
    k2k=None, v2k=None, FOLD: tl.constexpr = False,
):  # fmt: skip
    """One masked j-block at j0 of the j range [j_lo, j_hi] of a linear layout of `limit` rows
    (tiles.j_block: rows past j_hi zero-filled, counted on J_REPEAT / J_TAIL / J_EDGE), the
    window mask on its logits. k1_base / v1_base: base pointers, or (TMA) tensor descriptors of
    the rows up to j_hi (kv.block_rows). Returns (y, m_i, l_i) updated (softmax.online_block).
    The mask is formed after the logit product: under triton 3.6 the order steers ptxas's
    register allocation, and this one keeps every config but sm_90's 128x64 s1 free of spills
    there (the mask first spills sm_90's 64x64 s3 16 B; configs.py's _fwd16)."""
    js, j_ok, jd_mask = j_block(
        j0, jr, j_lo, j_hi, limit, d_ok, COUNTS, J_REPEAT, J_TAIL, J_EDGE, BLOCK_J, False, COUNT_PATHS
    )
    k1b = block_rows(k1_base, j0, k1_offs, stride_k1n, jd_mask, TMA)
    v1b = block_rows(v1_base, j0, v1_offs, stride_v1n, jd_mask, TMA)
    if FOLD:
        k1b, v1b = folded(k1b, k2k), folded(v1b, v2k)
    s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
    in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
    return online_block(s, in_win, v1b, y, m_i, l_i, c, a.dtype, True, INPUT_PRECISION, UPCAST)


@triton.jit
def attend_blocks(
    a, y, m_i, l_i, pos, k_ok, jr, j_first, n_first, j_second, trips, j_lo, j_hi, L1, R1, c,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
    J_PATH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, MASKED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, TMA: tl.constexpr,
    k2k=None, v2k=None, FOLD: tl.constexpr = False,
):  # fmt: skip
    """`trips` j-blocks of the j range [j_lo, j_hi] of a sequence of n rows: n_first of them from
    j_first on, the rest from j_second on, BLOCK_J apart; each counted on path J_PATH. MASKED:
    edge blocks (masked_block, with the FOLD operands k2k / v2k where set); else interior blocks
    (tiles.interior_blocks: every pair counts), loaded and softmaxed without a mask but the
    channels'. Returns (y, m_i, l_i) updated (softmax.online_block)."""
    tl.static_assert(MASKED or not FOLD, "the FOLD loop runs masked blocks only")
    for t in range(0, trips):
        j0 = j_first + t * BLOCK_J
        hit(COUNTS, J_PATH, True, COUNT_PATHS)
        if MASKED:  # one loop serves two ranges: one pipeline prologue, not two
            j0 = tl.where(t < n_first, j0, j_second + (t - n_first) * BLOCK_J)
            y, m_i, l_i = masked_block(
                a, y, m_i, l_i, j0, pos, k_ok, jr, j_lo, j_hi, L1, R1, c,
                k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
                P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_M, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA,
                k2k, v2k, FOLD,
            )  # fmt: skip
        else:
            k1b = block_rows(k1_base, j0, k1_offs, stride_k1n, d_ok[None, :], TMA)
            v1b = block_rows(v1_base, j0, v1_offs, stride_v1n, d_ok[None, :], TMA)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            y, m_i, l_i = online_block(s, None, v1b, y, m_i, l_i, c, a.dtype, False, INPUT_PRECISION, UPCAST)
    return y, m_i, l_i


@triton.jit
def attend_offset(
    a, m_i, l_i, pos, k_ok, jr, j_lo, j_hi, L1, R1, c,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, limit, d_ok, COUNTS,
    J_REPEAT: tl.constexpr, J_TAIL: tl.constexpr, J_EDGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, RING: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, TMA: tl.constexpr = False,
    acc=None, k2k=None, v2k=None, FOLD: tl.constexpr = False,
):  # fmt: skip
    """The j loop of one offset u with every block masked (decoding's, and the forward's configs
    without SPLIT_J): rows with operand `a` against the k1/v1 rows j_lo .. j_hi (kv.py: a linear
    layout, masked_block, pointers or TMA; or a ring of `limit` slots). Returns (y, m_i, l_i):
    the offset's partial sum y = sum_j P v1[j] in the scale of the new max m_i, and the new sum
    l_i. The FOLD loop's j loop too (attend_folded): the sum goes on from `acc` and the blocks
    take the folded operands k2k / v2k (masked_block)."""
    if acc is None:
        y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    else:
        y = acc
    for j0 in range(j_lo, j_hi + 1, BLOCK_J):
        if RING:
            js, j_ok, jd_mask = j_block(
                j0, jr, j_lo, j_hi, limit, d_ok, COUNTS, J_REPEAT, J_TAIL, J_EDGE, BLOCK_J, RING, COUNT_PATHS
            )
            slots = ring_slots(js, limit)
            k1b = ring_rows(k1_base, slots, k1_offs, stride_k1n, jd_mask)
            v1b = ring_rows(v1_base, slots, v1_offs, stride_v1n, jd_mask)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
            y, m_i, l_i = online_block(s, in_win, v1b, y, m_i, l_i, c, a.dtype, True, INPUT_PRECISION, UPCAST)
        else:
            y, m_i, l_i = masked_block(
                a, y, m_i, l_i, j0, pos, k_ok, jr, j_lo, j_hi, L1, R1, c,
                k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, limit, d_ok, COUNTS,
                J_REPEAT, J_TAIL, J_EDGE, BLOCK_M, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA,
                k2k, v2k, FOLD,
            )  # fmt: skip
    return y, m_i, l_i


@triton.jit
def attend_tile_offset(
    a, m_i, l_i, pos, k_ok, jr, j_lo, j_hi, ja, jb, L1, R1, c,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The forward's j loop of one offset u in two loops (SPLIT_J): the edge blocks (those before
    ja, then those from jb on), masked, then the interior blocks [ja, jb) unmasked
    (tiles.interior_blocks). The online softmax takes blocks in any order. Returns (y, m_i, l_i)
    as attend_offset."""
    y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_front = (ja - j_lo) // BLOCK_J
    n_edge = n_front + tl.cdiv(tl.maximum(j_hi + 1 - jb, 0), BLOCK_J)
    y, m_i, l_i = attend_blocks(
        a, y, m_i, l_i, pos, k_ok, jr, j_lo, n_front, jb, n_edge, j_lo, j_hi, L1, R1, c,
        k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
        P_J_EDGE, BLOCK_M, BLOCK_J, True, INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA,
    )  # fmt: skip
    y, m_i, l_i = attend_blocks(
        a, y, m_i, l_i, pos, k_ok, jr, ja, 0, ja, (jb - ja) // BLOCK_J, j_lo, j_hi, L1, R1, c,
        k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
        P_J_INTERIOR, BLOCK_M, BLOCK_J, False, INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA,
    )  # fmt: skip
    return y, m_i, l_i


@triton.jit
def attend_folded(
    q, acc, m_i, l_i, pos, row_ok, jr, j_lo, j_wide, j_hi, k_lo, k_hi, L1, R1, L2, R2, c,
    k2_row, v2_row, stride_k2n, stride_v2n, d_ok,
    k1_base, k1_offs, v1_base, v1_offs, k1t_base, k1t_offs, v1t_base, v1t_offs, stride_k1n, stride_v1n, n, COUNTS,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The FOLD loop: k outer over [k_lo, k_hi] (k2/v2 positions), the tile's j-blocks inner with
    k2[k] / v2[k] folded into the k1 / v1 blocks, so every row of the tile shares both operands
    and the softmax weights go straight into acc (no per-offset partial sum). A row counts a k
    when its offset pos - k lies in [-R2, L2]. Returns (acc, m_i, l_i)."""
    for k in range(k_lo, k_hi + 1):
        du = pos - k
        k_ok = row_ok & (du >= -R2) & (du <= L2)
        hit(COUNTS, P_U_REPEAT, k > k_lo, COUNT_PATHS)
        k2k = tl.load(k2_row + k * stride_k2n, mask=d_ok, other=0.0).to(tl.float32)
        v2k = tl.load(v2_row + k * stride_v2n, mask=d_ok, other=0.0).to(tl.float32)
        acc, m_i, l_i = attend_offset(
            q, m_i, l_i, pos, k_ok, jr, j_lo, j_wide, L1, R1, c,
            k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
            P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_M, BLOCK_J, acc.shape[1], False,
            INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA, acc, k2k, v2k, True,
        )  # fmt: skip
        if BLOCK_T > 0:
            n_narrow = narrow_trips(j_hi, j_wide, BLOCK_T)
            acc, m_i, l_i = attend_blocks(
                q, acc, m_i, l_i, pos, k_ok, tl.arange(0, BLOCK_T), j_wide + 1, n_narrow, j_wide + 1, n_narrow,
                j_lo, j_hi, L1, R1, c, k1t_base, k1t_offs, v1t_base, v1t_offs, stride_k1n, stride_v1n, n, d_ok,
                COUNTS, P_J_NARROW, BLOCK_M, BLOCK_T, True, INPUT_PRECISION, UPCAST, COUNT_PATHS, TMA,
                k2k, v2k, True,
            )  # fmt: skip
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["stride_lh"])
def _two_simplicial_fwd_kernel(
    Q, K1, K2, V1, V2, OUT, LSE, LSE_LO, CU_SEQLENS, COUNTS,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    stride_ob, stride_on, stride_oh,
    stride_lb, stride_lh,
    N, GROUP, D, L1, R1, L2, R2,
    scale,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, SPLIT_J: tl.constexpr = False,
    TMA: tl.constexpr = False, BLOCK_T: tl.constexpr = 0, KV_ALIGNED: tl.constexpr = False,
    NEG_SCALE: tl.constexpr = False, FOLD: tl.constexpr = False,
):  # fmt: skip
    start, n, p0, g, b, h0, rp, rh, pos, row_ok = query_tile(
        CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2, BLOCK_M, BLOCK_H, BLOCK_D, VARLEN, DET, COUNT_PATHS
    )
    if VARLEN:  # a batched grid has no tile past its sequence
        if p0 >= n:
            return
    dt = K1.dtype.element_ty
    # k1/v1 through tensor descriptors: where the config asks (TMA) and the strides allow (KV_ALIGNED)
    DESC: tl.constexpr = TMA and KV_ALIGNED
    r0 = p0.to(tl.int64) + start  # the tile's first row
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)
    q_ptrs = query_rows(Q, b, h0, r0, rp, rh, d, stride_qb, stride_qn, stride_qh, stride_qd)
    k1_base, k1_offs, v1_base, v1_offs, k2_base, k2_offs, v2_base, v2_offs = query_tile_kv(
        K1, K2, V1, V2, b, g, start, rp, jr, d,
        stride_k1b, stride_k1n, stride_k1h, stride_k1d, stride_k2b, stride_k2n, stride_k2h, stride_k2d,
        stride_v1b, stride_v1n, stride_v1h, stride_v1d, stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    )  # fmt: skip
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_M // BLOCK_H)
    # BLOCK_T > 0: the BLOCK_J loops end at the last whole block of [j_lo, j_hi] (row j_wide), and
    # BLOCK_T-row blocks take the rest: a 128-row tile's two positions span w1 + 1 rows, where one
    # more BLOCK_J block would hold a single row.
    j_wide = j_hi
    k1t_base, k1t_offs, v1t_base, v1t_offs = k1_base, k1_offs, v1_base, v1_offs
    if BLOCK_T > 0:
        j_wide = j_lo + (j_hi + 1 - j_lo) // BLOCK_J * BLOCK_J - 1
        jt = tl.arange(0, BLOCK_T)
        k1t_base, k1t_offs = k1_base, tile_offsets(jt, d, stride_k1n, stride_k1d)
        v1t_base, v1t_offs = v1_base, tile_offsets(jt, d, stride_v1n, stride_v1d)
        if DESC:
            k1t_base = row_descriptor(k1_base, j_hi + 1, D, stride_k1n, BLOCK_T, BLOCK_D)
            v1t_base = row_descriptor(v1_base, j_hi + 1, D, stride_v1n, BLOCK_T, BLOCK_D)
    if DESC:  # the tile's k1/v1 rows [0, j_hi]: a box's rows past j_hi are zero-filled, as the masks would
        k1_base = row_descriptor(k1_base, j_hi + 1, D, stride_k1n, BLOCK_J, BLOCK_D)
        v1_base = row_descriptor(v1_base, j_hi + 1, D, stride_v1n, BLOCK_J, BLOCK_D)
        hit(COUNTS, P_KV_TMA, True, COUNT_PATHS)
    else:
        hit(COUNTS, P_KV_POINTERS, True, COUNT_PATHS)

    c = exp_factor(scale)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # raw logits (softmax.py)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # FOLD (configs that ask for it): the k-outer loop where the tile packs heads and the logits
    # are trilinear, every block masked (SPLIT_J does not apply); elsewhere the offset loop.
    FOLDED: tl.constexpr = FOLD and BLOCK_H > 1 and not DET
    hit(COUNTS, P_FOLD, FOLDED, COUNT_PATHS)
    if FOLDED:
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if NEG_SCALE:
            q = -q
        p_last = tl.minimum(p0 + BLOCK_M // BLOCK_H - 1, n - 1)
        k_lo, k_hi = tl.maximum(p0 - L2, 0), tl.minimum(p_last + R2, n - 1)
        acc, m_i, l_i = attend_folded(
            q, acc, m_i, l_i, pos, row_ok, jr, j_lo, j_wide, j_hi, k_lo, k_hi, L1, R1, L2, R2, c,
            k2_base + start * stride_k2n + d * stride_k2d, v2_base + start * stride_v2n + d * stride_v2d,
            stride_k2n, stride_v2n, d_ok,
            k1_base, k1_offs, v1_base, v1_offs, k1t_base, k1t_offs, v1t_base, v1t_offs, stride_k1n, stride_v1n, n,
            COUNTS, BLOCK_M, BLOCK_J, BLOCK_T, INPUT_PRECISION, UPCAST, COUNT_PATHS, DESC,
        )  # fmt: skip
    else:
        for u in range(u_lo, u_hi + 1):
            k_ok, kd_mask = offset_rows(pos, u, row_ok, n, d_ok, u_lo, COUNTS, COUNT_PATHS)
            k2u = rows_at(k2_base, r0 - u, k2_offs, stride_k2n, kd_mask)
            # q is re-read (from cache) per u rather than held: registers go to the accumulators.
            q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
            a = pair_operand(q, k2u, d, sh1, sh2, dt, DET)
            if NEG_SCALE:  # s = -(q k1 k2): the max of z = scale * s is |scale| * max s
                a = -a
            m_start = m_i
            if SPLIT_J:
                ja, jb = interior_blocks(p0, u, n, j_lo, L1, R1, BLOCK_M // BLOCK_H, BLOCK_J)
                if BLOCK_T > 0:  # blocks past j_wide are the narrow loop's
                    ja, jb = tl.minimum(ja, j_wide + 1), tl.minimum(jb, j_wide + 1)
                y, m_i, l_i = attend_tile_offset(
                    a, m_i, l_i, pos, k_ok, jr, j_lo, j_wide, ja, jb, L1, R1, c,
                    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
                    BLOCK_M, BLOCK_J, BLOCK_D, INPUT_PRECISION, UPCAST, COUNT_PATHS, DESC,
                )  # fmt: skip
            else:
                y, m_i, l_i = attend_offset(
                    a, m_i, l_i, pos, k_ok, jr, j_lo, j_wide, L1, R1, c,
                    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
                    P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_M, BLOCK_J, BLOCK_D, False,
                    INPUT_PRECISION, UPCAST, COUNT_PATHS, DESC,
                )  # fmt: skip
            if BLOCK_T > 0:
                n_narrow = narrow_trips(j_hi, j_wide, BLOCK_T)
                y, m_i, l_i = attend_blocks(
                    a, y, m_i, l_i, pos, k_ok, jt, j_wide + 1, n_narrow, j_wide + 1, n_narrow, j_lo, j_hi, L1, R1, c,
                    k1t_base, k1t_offs, v1t_base, v1t_offs, stride_k1n, stride_v1n, n, d_ok, COUNTS,
                    P_J_NARROW, BLOCK_M, BLOCK_T, True, INPUT_PRECISION, UPCAST, COUNT_PATHS, DESC,
                )  # fmt: skip
            beta = offset_rescale(m_start, m_i, c)
            v2u = rows_at(v2_base, r0 - u, v2_offs, stride_v2n, kd_mask)
            acc = acc * beta[:, None] + y * v2u.to(tl.float32)

    l_i = final_sum(l_i)
    out = acc / l_i[:, None]
    o_ptrs = query_rows(OUT, b, h0, r0, rp, rh, d, stride_ob, stride_on, stride_oh, 1)
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse, lse_lo = final_lse(natural_max(m_i, scale), l_i)
    row_offs = b * stride_lb + h0 * stride_lh + r0 + (rh * stride_lh + rp)
    tl.store(LSE + row_offs, lse, mask=row_ok)
    tl.store(LSE_LO + row_offs, lse_lo, mask=row_ok)
