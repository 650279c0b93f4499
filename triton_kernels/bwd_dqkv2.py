r"""Backward kernel for dq, dk2 and dv2 in one pass over the query tiles (issue 24).

Rows are the forward's (fwd.py, tiles.query_tile): row r of a tile is position p0 + r // BLOCK_H
of query head h0 + r % BLOCK_H, all sharing kv head g. Per offset u (k = i - u), with
dA = P * (dP - Delta) (CONTRACT §1):

    a   = q * k2[i - u],  bo = dout * v2[i - u]          built once per u
    P   = exp(min((a @ k1^T * scale - lse) - lse_lo, 0)),  dP = bo @ v1^T     per j-block
    x  += dA @ k1[j-block],  y += P @ v1[j-block]                             per j-block
    dq      += x * k2[i - u]                              rows owned: stored once per tile
    dk2[k]  += sum over the tile's heads of x * q         (times scale in the reduce)
    dv2[k]  += sum over the tile's heads of y * dout

Four tensor-core products per j-block (8*D per triple) where bwd_dq + bwd_dkv2 took 14*D; the
head sum is in registers ([BLOCK_P, BLOCK_H, D] summed over heads). Determinant logits: a =
k2 x q, dq += x x k2, dk2 += q x x per chunk (operand.py). Delta stays the preprocess's
rowsum(dout * out): taking it as rowsum(P * dP) inside would need the whole j-k window of a row
before its first dA, i.e. a second pass over the window (or one more MMA per block, P @ k1 of
the other axis), so it is not done here.

Deterministic without atomics. The dk2 / dv2 rows of one k are touched by the tiles of up to
w2 positions, i.e. by several programs. A program owns a SPAN of S consecutive positions of
one sequence (S / BLOCK_P tiles, one after the other), so it only touches rows k in
[P0 - L2, P0 + S - 1 + R2] (clipped to its sequence): S + w2 - 1 rows. It adds its partials
into float32 scratch at layer c % LAYERS (c its span index) and at the rows' ABSOLUTE
positions (batch / packing row), where LAYERS = 1 + cdiv(L2 + R2, S) (at most the number of
spans) makes the ranges of one layer's programs disjoint: each program read-modify-writes rows
only it touches, one (tile, u) step after the other, with a CTA barrier between one step's
stores and the next step's loads (another thread of the CTA may hold those addresses;
bar.sync orders global memory within a CTA). `_reduce_dkv2_kernel` then sums the layers and
head blocks in a fixed order: bitwise deterministic by construction.

dq in a slot (DQ_SCRATCH, the configs that set it: sm_90's head-packed tiles). The tile owns its
dq rows, but holding dq in registers beside x and y takes a third [BLOCK_M, D] float32 tile. With
DQ_SCRATCH each offset step adds its part x * k2[i - u] into the program's own [BLOCK_M,
BLOCK_D] float32 slot (read-modify-write in the tile's row order; the first step of a tile
writes without reading, so the slots need no zeroing), behind the same CTA barrier as the
partials; the tile's end reads the slot, scales and stores dq, then waits at a barrier before
the next tile's first step overwrites it. A slot is used by one program only and stays in L2
while the program runs. Size (launch.dq_slot_rows): programs x BLOCK_M x BLOCK_D x 4 bytes,
with spans of S positions a fraction BLOCK_M / (BLOCK_H * S) of a float32 dq; target shape (512
spans of 32 positions x 2 sequences, 128-row tiles, D = 128): 64 MiB (33 MiB with the 64-row
tiles alone). The slot stays a pointer read-modify-write: through a descriptor its bulk stores
would need the completion wait of the operand slot's below once more per step.

Tensor descriptors (configs with TMA, where the launcher finds q, dout, dq, k2 and v2 16-byte
aligned, Q_ALIGNED; pointer loads and stores otherwise). A query tile's rows are a box of a
[positions, heads, D] view (kv.query_descriptor: BLOCK_P positions x BLOCK_H heads, whatever Hq),
its k2 / v2 rows a [BLOCK_P, D] box at k = p0 - u: one bulk copy each in place of [rows, D]
64-bit addresses that the compiler hoists out of the loops and keeps across the j loop. The boxes
zero-fill positions past the sequence, heads past the group, channels past D and k2 / v2 rows
outside [0, n), as the masks do; one select per position zeroes the q / dout rows whose k lies
outside (query_box). dq is stored through the same kind of box, which clips those rows.

k1 / v1 j-blocks through descriptors (configs with KV1_TMA, where the launcher finds k1 and v1
16-byte aligned, KV_ALIGNED): one [BLOCK_J, BLOCK_D] box of a descriptor over the tile's rows [0,
j_hi] per block, made per tile (its rows past j_hi zero-filled, as the masks would leave them: a
row past the tile's range may hold a neighbour's or padding, NaN included), in place of the [BLOCK_J,
D] offsets of the pointer loads, which the compiler keeps in registers across the loops.

Partials through descriptors (configs with PART_TMA, where D is a multiple of 4 so the scratch rows
are 16-byte aligned, PART_ALIGNED): each offset step's dk2 / dv2 rows are a [BLOCK_P, BLOCK_D] box
of a descriptor over the sequence's n scratch rows of the program's layer and column, read,
added to and stored back (rows outside [0, n) read as zeros and not written; add_partial).
Sequence tiles (one head, Hq / Hkv < 16) have BLOCK_P = BLOCK_M rows of partials, whose
[BLOCK_M, D] pointer offsets would stay in registers across the loops (5.2-5.5 KB of spills at 64
and 128 rows on sm_90); through the box they are one coordinate. The next
step's boxes overlap this step's rows, so the step ends as the operand slot's hand-off does:
this thread's bulk stores completed, a CTA barrier, a proxy fence (bulk_stores_visible).

Operand slot (AB_SLOT, with the descriptors). sm_90's 128-row tile (two 64-row warp groups, each
owning whole rows, so S, dP and exp once per logit) holds x and y (128 registers a thread) and
would hold the pair operands a and bo as register operands of the S and dP products (64 more):
with everything else, past 255. Each offset step instead stores a and bo into the program's own
[2 * BLOCK_M, BLOCK_D] slot and loads them back through a descriptor, so the products read them
from shared memory. The stores are bulk copies, which triton does not wait for (only for their
shared-memory reads) before the loads: bulk_stores_visible waits for their completion (PTX
cp.async.bulk.wait_group 0, each thread its own stores), then a CTA barrier, then the loads. Size
(launch.ab_slot_rows): programs x 2 x BLOCK_M x BLOCK_D elements of the inputs' dtype; target
shape (1024 programs of 128 rows, D = 128, bf16): 64 MiB, as the dq slots. The interpreter runs
every descriptor path (its stores are synchronous); the wait's ordering is checked in the PTX
only (store, commit, wait_group 0, bar.sync, load), not yet on a GPU (2026-12-07): on one,
tests/test_triton.py forces each sm_90 config with a hand-off (operand slot, PART_TMA) in turn.

Scratch (launch.dqkv2_scratch_shape): 2 x LAYERS x T x Hkv x n_hblk x D float32, i.e.
8 * LAYERS * T * Hkv * n_hblk * D bytes (T = B * N rows, or the packing's rows; n_hblk head
blocks per kv head: 1 with head packing up to 64 heads, the group's size with sequence tiles),
zeroed on the host. launch.dqkv2_span picks S >= w2 - 1, so LAYERS = 2 (16 * T * Hkv * n_hblk
* D bytes), whenever that leaves 2 programs per SM; shorter sequences get smaller spans and
up to 1 + cdiv(w2 - 1, S) layers. Target shape (B = 2, N = 16384, Hkv = 1, D = 128, w2 = 32,
64 heads packed, 132 SMs): S = 32 (a multiple of the 128-row tile's two positions), LAYERS = 2,
64 MiB.
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import count_common, hit
from .kv import block_rows, query_box, query_descriptor, query_rows, row_descriptor, rows_at, tile_offsets
from .operand import chunk_shifts, cross, mma, pair_operand, permuted
from .seqlen import sequence_span
from .softmax import recomputed_block
from .tiles import (
    P_J_PAST_N,
    P_J_REPEAT,
    P_J_TAIL,
    j_block,
    offset_rows,
    query_tile_heads,
    query_tile_kv,
    query_tile_loops,
    query_tile_positions,
)

#   span_repeat    a second (third, ...) row tile of one program's span
#   layer_up       a program writing its partials into a scratch layer > 0
#   rows_clipped   a program whose k range [P0 - L2, P0 + S - 1 + R2] leaves its sequence
#   head_sum       a head sum over more than one query head (BLOCK_H > 1)
#   dq_scratch     an offset step adding its dq part into the program's float32 slot (DQ_SCRATCH)
#   one_position   (DQ_SCRATCH) a head sum of a one-position tile in the tile's own layout
#   q_tma / q_pointers  (TMA configs) q, dout, k2, v2 rows read and dq stored through tensor
#                       descriptors / pointer loads and stores (strides not aligned)
#   ab_slot        (AB_SLOT) an offset step passing its operands a, bo through the operand slot
#   two_positions  (DQ_SCRATCH) a head sum of a two-position tile in the tile's own layout
#   kv_tma / kv_pointers  k1/v1 j-blocks read through tensor descriptors (KV1_TMA configs, strides
#                         aligned) / pointer loads
#   part_tma / part_pointers  dk2 / dv2 partials added through descriptors of the scratch (PART_TMA
#                             configs, D a multiple of 4) / pointer loads and stores
(
    P_SPAN_REPEAT, P_LAYER_UP, P_ROWS_CLIPPED, P_HEAD_SUM, P_DQ_SCRATCH, P_ONE_POSITION, P_Q_TMA, P_Q_POINTERS,
    P_AB_SLOT, P_TWO_POSITIONS, P_KV_TMA, P_KV_POINTERS, P_PART_TMA, P_PART_POINTERS,
) = coverage.slots(
    ("bwd_dqkv2",), "span_repeat", "layer_up", "rows_clipped", "head_sum", "dq_scratch", "one_position",
    "q_tma", "q_pointers", "ab_slot", "two_positions", "kv_tma", "kv_pointers", "part_tma", "part_pointers",
)  # fmt: skip
#   layer_repeat   the reduce summing a second (third, ...) layer
(P_LAYER_REPEAT,) = coverage.slots(("bwd_reduce2",), "layer_repeat", common=False)


@triton.jit
def recomputed_j_block(
    j0, jr, j_lo, j_hi, n, d_ok, w_lo, w_hi, a, bo, lse, lse_lo, delta, scale,
    k1_base, k1_offs, v1_base, v1_offs, stride_k1n, stride_v1n, COUNTS,
    J_REPEAT: tl.constexpr, J_TAIL: tl.constexpr, J_PAST_N: tl.constexpr, BLOCK_J: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, KV_DESC: tl.constexpr,
):  # fmt: skip
    """One j-block of the backward's query-side loop: rows with operands a (logits) and bo (dP)
    against the k1/v1 rows j0 + jr of [j_lo, j_hi], a row's pairs counting for j in [w_lo, w_hi]
    (window_bounds); lse, lse_lo and delta per row. k1_base / v1_base: base pointers, or (KV_DESC)
    tensor descriptors of the tile's rows [0, j_hi] (kv.block_rows). Returns (P, dA, k1b, v1b)."""
    js, j_ok, jd_mask = j_block(
        j0, jr, j_lo, j_hi, n, d_ok, COUNTS, J_REPEAT, J_TAIL, J_PAST_N, BLOCK_J, False, COUNT_PATHS
    )
    k1b = block_rows(k1_base, j0, k1_offs, stride_k1n, jd_mask, KV_DESC)
    v1b = block_rows(v1_base, j0, v1_offs, stride_v1n, jd_mask, KV_DESC)
    s = mma(a, tl.trans(k1b), tl.zeros([a.shape[0], BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
    in_win = (js[None, :] >= w_lo[:, None]) & (js[None, :] <= w_hi[:, None])
    p, ds = recomputed_block(s, in_win, bo, v1b, lse, lse_lo, delta, scale, True, INPUT_PRECISION, UPCAST)
    return p, ds, k1b, v1b


@triton.jit
def window_bounds(rows_ok, pos, j_hi, L1, R1):
    """[w_lo, w_hi] per row: the j a row's pairs count for, J(pos) = [pos - L1, pos + R1] cut at
    j_hi, empty where rows_ok is False (mask.j_window_mask's pairs: two compares an element, and
    two values per row held across the j loop)."""
    w_lo = pos - L1
    return w_lo, tl.where(rows_ok, tl.minimum(pos + R1, j_hi), w_lo - 1)


@triton.jit
def head_sum(x, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, IN_LAYOUT: tl.constexpr = False):
    """[BLOCK_P, BLOCK_D]: the rows of x [BLOCK_P * BLOCK_H, BLOCK_D] summed over their heads
    (row r is position r // BLOCK_H, head r % BLOCK_H). IN_LAYOUT (the DQ_SCRATCH tiles): a tile
    of one position sums x's columns in x's own layout, where the reshape would first move the
    float32 tile through shared memory (the model, sm_90 target, 64 x 32 tile: with kv_rows 181 ->
    178 ms serialized); kept to those tiles, where it was measured. A tile of two positions (sm_90's
    128 rows, one position a warp group) sums each position's rows the same way, under a select
    (the reshape's conversion costs the 128-row tile 16 B of spills)."""
    if BLOCK_H == 1:
        return x
    if IN_LAYOUT and BLOCK_P == 1:
        return tl.sum(x, axis=0)[None, :]
    if IN_LAYOUT and BLOCK_P == 2:
        first = (tl.arange(0, BLOCK_P * BLOCK_H) < BLOCK_H)[:, None]
        s0 = tl.sum(tl.where(first, x, 0.0), axis=0)
        s1 = tl.sum(tl.where(first, 0.0, x), axis=0)
        return tl.where((tl.arange(0, BLOCK_P) == 0)[:, None], s0[None, :], s1[None, :])
    return tl.sum(tl.reshape(x, [BLOCK_P, BLOCK_H, BLOCK_D]), axis=1)


@triton.jit
def kv_rows(
    base, first, offs, offs_p, stride_n, kd_mask, p0, pr, u, n, d_ok,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PER_POSITION: tl.constexpr,
    desc=None, DESC: tl.constexpr = False,
):  # fmt: skip
    """The k2 / v2 rows first + r of offset u for the tile's rows: loaded per row (offs, zero
    where kd_mask is False), or (PER_POSITION, head-packed tiles) once per position p0 + pr (offs_p,
    zero where its k = p0 + pr - u lies outside [0, n)) and repeated for the position's BLOCK_H
    heads. PER_POSITION is the DQ_SCRATCH tiles' (the model, sm_90 target, 64 x 32 tile: 189 ->
    181 ms serialized, one load per position instead of one per head); the float32 head-packed
    16-row tiles spill 0.7-1.5 KB with it. DESC (TMA configs): the BLOCK_P rows through the
    [BLOCK_P, BLOCK_D] box `desc` (kv.row_descriptor over the sequence's rows), rows outside
    [0, n) zero-filled by the box, positions past n by a select, then repeated per head."""
    if DESC:  # rows k = p0 + pr - u through a [BLOCK_P, BLOCK_D] box: rows outside [0, n) zero-filled
        x = tl.where((p0 + pr < n)[:, None], desc.load([p0 - u, 0]), 0.0)
        if BLOCK_H > 1:
            x = tl.reshape(tl.broadcast_to(x[:, None, :], [BLOCK_P, BLOCK_H, BLOCK_D]), [BLOCK_P * BLOCK_H, BLOCK_D])
        return x
    if PER_POSITION and BLOCK_H > 1:
        ks = p0 + pr - u
        x = rows_at(base, first, offs_p, stride_n, ((p0 + pr < n) & (ks >= 0) & (ks < n))[:, None] & d_ok[None, :])
        return tl.reshape(tl.broadcast_to(x[:, None, :], [BLOCK_P, BLOCK_H, BLOCK_D]), [BLOCK_P * BLOCK_H, BLOCK_D])
    return rows_at(base, first, offs, stride_n, kd_mask)


@triton.jit
def add_partial(P, first, offs, mask, part, row, DESC: tl.constexpr = False):
    """Scratch rows P + first + offs += part (read-modify-write of rows this program alone owns).
    The 64-bit `first` is a scalar and the in-tile `offs` 32-bit: a [rows, D] tensor of 64-bit
    offsets, hoisted out of the loops, would hold two registers per element for the whole kernel.
    DESC (PART_TMA): P is a descriptor of the sequence's scratch rows, the part its box at `row`
    (rows k outside [0, n): read as zeros and not written, as `mask` has them; rows of positions
    past n, which `mask` skips, are written back unchanged: their part is zero, and their k rows
    lie in this program's own range)."""
    if DESC:
        P.store([row, 0], P.load([row, 0]) + part)
    else:
        ptrs = (P + first) + offs
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + part, mask=mask)


@triton.jit
def bulk_stores_visible(u, UPCAST: tl.constexpr):
    """The hand-off from this CTA's bulk (TMA) stores to its next bulk loads of the same global
    rows (the operand slot, PART_TMA's partials), a CTA barrier included:
    - each thread waits until its bulk stores have completed, their global writes included
      (PTX cp.async.bulk.wait_group 0): triton waits only for their shared-memory reads
      (wait_group.read) before the kernel's end;
    - the barrier: the stores' issuing thread may be another;
    - a proxy fence for global memory: the writes, observed complete by their issuing thread and
      ordered to the others by the barrier (generic proxy), come before this thread's next
      async-proxy (TMA) reads of them. Conservative: both ends are TMA, but the hand-off between
      them is the barrier's, and a stale value would be silently wrong gradients, which no CPU
      test can see.
    The interpreter's stores are synchronous: only the barrier."""
    if not UPCAST:
        tl.inline_asm_elementwise(
            "cp.async.bulk.wait_group 0;\n\tmov.b32 $0, 0;", "=r,r", [u], dtype=tl.int32, is_pure=False, pack=1
        )
    tl.debug_barrier()
    if not UPCAST:
        tl.inline_asm_elementwise(
            "fence.proxy.async.global;\n\tmov.b32 $0, 0;", "=r,r", [u], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def tile_rows(src, p0, kp_ok, kd_mask, DESC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The query tile's q (dout) rows at position p0, zero where kd_mask is False: through the
    tensor descriptor `src` (DESC: kv.query_descriptor; its box zero-fills rows past the sequence
    and the group and channels past D, a select per position those whose k lies outside, kp_ok
    [BLOCK_P]), or pointer loads from `src`."""
    if DESC:
        rows = query_box(src, p0, kp_ok, BLOCK_M, BLOCK_D)
    else:
        rows = tl.load(src, mask=kd_mask, other=0.0)
    return rows


@triton.jit
def dv2_partial(DV2P, first, part_offs, mask, y, do, row, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_D: tl.constexpr, IN_LAYOUT: tl.constexpr, DESC: tl.constexpr):  # fmt: skip
    """dv2's partial of one offset step, sum over the tile's heads of y * dout, into the scratch."""
    part = head_sum(y * do.to(tl.float32), BLOCK_P, BLOCK_H, BLOCK_D, IN_LAYOUT)
    add_partial(DV2P, first, part_offs, mask, part, row, DESC)


@triton.jit(do_not_specialize=["stride_lh", "stride_sl", "SPAN", "LAYERS"])
def _two_simplicial_bwd_dqkv2_kernel(
    Q, K1, K2, V1, V2, DOUT, LSE, LSE_LO, DELTA, DQ, DQP, ABP, DK2P, DV2P, CU_SEQLENS, COUNTS,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_lb, stride_lh,
    stride_dqb, stride_dqn, stride_dqh,
    stride_sl, stride_sb, stride_sn,
    N, GROUP, D, L1, R1, L2, R2,
    scale, SPAN, LAYERS,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
    DQ_SCRATCH: tl.constexpr = False, TMA: tl.constexpr = False, Q_ALIGNED: tl.constexpr = False,
    AB_SLOT: tl.constexpr = False, KV1_TMA: tl.constexpr = False, KV_ALIGNED: tl.constexpr = False,
    PART_TMA: tl.constexpr = False, PART_ALIGNED: tl.constexpr = False,
):  # fmt: skip
    BLOCK_P: tl.constexpr = BLOCK_M // BLOCK_H
    # q / dout through tensor descriptors: where the config asks (TMA) and the strides allow (Q_ALIGNED)
    DESC: tl.constexpr = TMA and Q_ALIGNED
    # the pair operands through the program's operand slot (AB_SLOT, with the descriptors only)
    AB: tl.constexpr = AB_SLOT and DESC
    # k1 / v1 j-blocks through tensor descriptors: where the config asks (KV1_TMA) and the strides allow
    KV_DESC: tl.constexpr = KV1_TMA and KV_ALIGNED
    # dk2 / dv2 partials through tensor descriptors of the scratch: where the config asks (PART_TMA)
    # and the scratch rows are 16-byte aligned (PART_ALIGNED: float32 rows of D, D a multiple of 4)
    PART_DESC: tl.constexpr = PART_TMA and PART_ALIGNED
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    c = tl.program_id(0)
    span0 = c * SPAN
    if span0 >= n:  # a packed sequence shorter than the longest: nothing to do
        count_common(COUNTS, span0, n, D, GROUP, R1, R2, BLOCK_P, BLOCK_D, VARLEN, DET, COUNT_PATHS)
        return
    span_end = tl.minimum(span0 + SPAN, n)
    dt = K1.dtype.element_ty
    g, b, h0, rp, rh, head_ok = query_tile_heads(GROUP, BLOCK_M, BLOCK_H)
    hcol = tl.program_id(1)  # the scratch column: kv head g, head block hb
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)
    pr = tl.arange(0, BLOCK_P)  # the positions of a tile, one row each after the head sum

    layer = c % LAYERS
    hit(COUNTS, P_LAYER_UP, layer > 0, COUNT_PATHS)
    hit(COUNTS, P_ROWS_CLIPPED, (span0 - L2 < 0) | (span0 + SPAN - 1 + R2 >= n), COUNT_PATHS)
    hit(COUNTS, P_HEAD_SUM, BLOCK_H > 1, COUNT_PATHS)
    hit(COUNTS, P_ONE_POSITION, DQ_SCRATCH and BLOCK_H > 1 and BLOCK_P == 1, COUNT_PATHS)
    hit(COUNTS, P_TWO_POSITIONS, DQ_SCRATCH and BLOCK_H > 1 and BLOCK_P == 2, COUNT_PATHS)
    # Partial rows of this program: layer, batch, head column; row start + k added per step.
    part_base = layer.to(tl.int64) * stride_sl + b * stride_sb + hcol.to(tl.int64) * D + start * stride_sn
    part_offs = pr[:, None] * stride_sn + d[None, :]
    if PART_DESC:  # the sequence's n scratch rows of this program's layer and column
        dk2_dst = row_descriptor(DK2P + part_base, n, D, stride_sn, BLOCK_P, BLOCK_D)
        dv2_dst = row_descriptor(DV2P + part_base, n, D, stride_sn, BLOCK_P, BLOCK_D)
        hit(COUNTS, P_PART_TMA, True, COUNT_PATHS)
    else:
        dk2_dst, dv2_dst = DK2P, DV2P
        hit(COUNTS, P_PART_POINTERS, True, COUNT_PATHS)

    k1_base, k1_offs, v1_base, v1_offs, k2_base, k2_offs, v2_base, v2_offs = query_tile_kv(
        K1, K2, V1, V2, b, g, start, rp, jr, d,
        stride_k1b, stride_k1n, stride_k1h, stride_k1d, stride_k2b, stride_k2n, stride_k2h, stride_k2d,
        stride_v1b, stride_v1n, stride_v1h, stride_v1d, stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    )  # fmt: skip
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    k2p_offs, v2p_offs = tile_offsets(pr, d, stride_k2n, stride_k2d), tile_offsets(pr, d, stride_v2n, stride_v2d)
    slot = (tl.program_id(2) * tl.num_programs(1) + hcol) * tl.num_programs(0) + c  # this program's slots
    if DQ_SCRATCH:  # this program's dq slot: [BLOCK_M, BLOCK_D] float32, rows in tile order
        dq_slot = DQP + slot.to(tl.int64) * (BLOCK_M * BLOCK_D)
        slot_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_D + d[None, :]
    if AB:  # this program's operand slot: a, then bo, [BLOCK_M, BLOCK_D] each
        ab_desc = tl.make_tensor_descriptor(
            ABP + slot.to(tl.int64) * (2 * BLOCK_M * BLOCK_D),
            shape=[2 * BLOCK_M, BLOCK_D],
            strides=[BLOCK_D, 1],
            block_shape=[BLOCK_M, BLOCK_D],
        )
    if DESC:  # the group's heads from h0 (the box zero-fills those past it), positions of the sequence
        heads = (GROUP - (h0 - g.to(tl.int64) * GROUP)).to(tl.int32)
        q_desc = query_descriptor(
            Q + b * stride_qb + h0 * stride_qh + start * stride_qn, n, heads, D, stride_qn, stride_qh,
            BLOCK_P, BLOCK_H, BLOCK_D,
        )  # fmt: skip
        do_desc = query_descriptor(
            DOUT + b * stride_dob + h0 * stride_doh + start * stride_don, n, heads, D, stride_don, stride_doh,
            BLOCK_P, BLOCK_H, BLOCK_D,
        )  # fmt: skip
        dq_desc = query_descriptor(
            DQ + b * stride_dqb + h0 * stride_dqh + start * stride_dqn, n, heads, D, stride_dqn, stride_dqh,
            BLOCK_P, BLOCK_H, BLOCK_D,
        )  # fmt: skip
        k2_desc = row_descriptor(k2_base + start * stride_k2n, n, D, stride_k2n, BLOCK_P, BLOCK_D)
        v2_desc = row_descriptor(v2_base + start * stride_v2n, n, D, stride_v2n, BLOCK_P, BLOCK_D)
        hit(COUNTS, P_Q_TMA, True, COUNT_PATHS)
    else:
        k2_desc, v2_desc = k2_base, v2_base  # unused
        hit(COUNTS, P_Q_POINTERS, True, COUNT_PATHS)
    hit(COUNTS, P_KV_TMA, KV_DESC, COUNT_PATHS)
    hit(COUNTS, P_KV_POINTERS, not KV_DESC, COUNT_PATHS)

    for p0 in range(span0, span_end, BLOCK_P):
        hit(COUNTS, P_SPAN_REPEAT, p0 > span0, COUNT_PATHS)
        pos, row_ok = query_tile_positions(
            COUNTS, p0, n, rp, head_ok, D, GROUP, R1, R2, BLOCK_M, BLOCK_H, BLOCK_D, VARLEN, DET, COUNT_PATHS
        )
        r0 = tl.cast(p0, tl.int64) + start  # the tile's first row
        if DESC:
            q_src, do_src = q_desc, do_desc
        else:
            q_src = query_rows(Q, b, h0, r0, rp, rh, d, stride_qb, stride_qn, stride_qh, stride_qd)
            do_src = query_rows(DOUT, b, h0, r0, rp, rh, d, stride_dob, stride_don, stride_doh, stride_dod)
        row_offs = b * stride_lb + h0 * stride_lh + r0 + (rh * stride_lh + rp)
        lse = tl.load(LSE + row_offs, mask=row_ok, other=0.0)
        lse_lo = tl.load(LSE_LO + row_offs, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + row_offs, mask=row_ok, other=0.0)
        u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_P)
        if KV_DESC:  # the tile's k1/v1 rows [0, j_hi]: a box's rows past j_hi are zero-filled, as the masks would
            k1_src = row_descriptor(k1_base, j_hi + 1, D, stride_k1n, BLOCK_J, BLOCK_D)
            v1_src = row_descriptor(v1_base, j_hi + 1, D, stride_v1n, BLOCK_J, BLOCK_D)
        else:
            k1_src, v1_src = k1_base, v1_base

        if not DQ_SCRATCH:
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for u in range(u_lo, u_hi + 1):
            k_ok, kd_mask = offset_rows(pos, u, row_ok, n, d_ok, u_lo, COUNTS, COUNT_PATHS)
            ks = p0 + pr - u  # the tile's positions: inside the sequence, k too
            kp_ok = (p0 + pr < n) & (ks >= 0) & (ks < n)
            # q, dout, k2 and v2 rows are re-read (from cache) after the j loop rather than held
            # across it: the loop already holds x and y (and dq without DQ_SCRATCH), [BLOCK_M, D]
            # float32 tiles.
            k2u = kv_rows(
                k2_base, r0 - u, k2_offs, k2p_offs, stride_k2n, kd_mask, p0, pr, u, n, d_ok,
                BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH, k2_desc, DESC,
            )  # fmt: skip
            a = pair_operand(tile_rows(q_src, p0, kp_ok, kd_mask, DESC, BLOCK_M, BLOCK_D), k2u, d, sh1, sh2, dt, DET)
            v2u = kv_rows(
                v2_base, r0 - u, v2_offs, v2p_offs, stride_v2n, kd_mask, p0, pr, u, n, d_ok,
                BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH, v2_desc, DESC,
            )  # fmt: skip
            do = tile_rows(do_src, p0, kp_ok, kd_mask, DESC, BLOCK_M, BLOCK_D)
            bo = (do.to(tl.float32) * v2u.to(tl.float32)).to(dt)
            if AB:  # a and bo through the slot: loaded, the products read them from shared memory
                hit(COUNTS, P_AB_SLOT, True, COUNT_PATHS)
                ab_desc.store([0, 0], a)
                ab_desc.store([BLOCK_M, 0], bo)
                bulk_stores_visible(u, UPCAST)
                a = ab_desc.load([0, 0])
                bo = ab_desc.load([BLOCK_M, 0])
            w_lo, w_hi = window_bounds(k_ok, pos, j_hi, L1, R1)
            x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for j0 in range(j_lo, j_hi + 1, BLOCK_J):
                p, ds, k1b, v1b = recomputed_j_block(
                    j0, jr, j_lo, j_hi, n, d_ok, w_lo, w_hi, a, bo, lse, lse_lo, delta, scale,
                    k1_src, k1_offs, v1_src, v1_offs, stride_k1n, stride_v1n, COUNTS,
                    P_J_REPEAT, P_J_TAIL, P_J_PAST_N, BLOCK_J, INPUT_PRECISION, UPCAST, COUNT_PATHS, KV_DESC,
                )  # fmt: skip
                x = mma(ds.to(dt), k1b, x, INPUT_PRECISION, UPCAST)
                y = mma(p.to(dt), v1b, y, INPUT_PRECISION, UPCAST)
            first = part_base + tl.cast(p0 - u, tl.int64) * stride_sn
            mask = kp_ok[:, None] & d_ok[None, :]
            # Rows masked out above (k outside, heads past the group, past n) hold zeros. With dq
            # in the slot y goes first, dying before x's two uses load their operands (sm_90's
            # 64 x 32 spills 24-60 B otherwise); dq in registers keeps y to the end (the float32
            # head-packed 16-row tiles spill 0.7-1.5 KB otherwise).
            if DQ_SCRATCH:
                dv2_partial(
                    dv2_dst, first, part_offs, mask, y, tile_rows(do_src, p0, kp_ok, kd_mask, DESC, BLOCK_M, BLOCK_D),
                    p0 - u, BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH, PART_DESC,
                )  # fmt: skip
            k2u = kv_rows(
                k2_base, r0 - u, k2_offs, k2p_offs, stride_k2n, kd_mask, p0, pr, u, n, d_ok,
                BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH, k2_desc, DESC,
            )  # fmt: skip
            if DET:  # dq += x x k2, dk2 += q x x per chunk
                x_1, x_2 = permuted(x, d, sh1, sh2)
                k2_1, k2_2 = permuted(k2u, d, sh1, sh2)
                dqu = cross(x_1, x_2, k2_1, k2_2)
            else:
                dqu = x * k2u.to(tl.float32)
            if DQ_SCRATCH:  # the first offset of the tile starts the slot afresh
                hit(COUNTS, P_DQ_SCRATCH, True, COUNT_PATHS)
                prev = tl.load(dq_slot + slot_offs, mask=u > u_lo, other=0.0)
                tl.store(dq_slot + slot_offs, prev + dqu)
            else:
                dq += dqu
            q = tile_rows(q_src, p0, kp_ok, kd_mask, DESC, BLOCK_M, BLOCK_D)
            if DET:
                q_1, q_2 = permuted(q, d, sh1, sh2)
                dk2 = cross(q_1, q_2, x_1, x_2)
            else:
                dk2 = x * q.to(tl.float32)
            add_partial(dk2_dst, first, part_offs, mask, head_sum(dk2, BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH), p0 - u,
                        PART_DESC)  # fmt: skip
            if not DQ_SCRATCH:
                dv2_partial(
                    dv2_dst, first, part_offs, mask, y, tile_rows(do_src, p0, kp_ok, kd_mask, DESC, BLOCK_M, BLOCK_D),
                    p0 - u, BLOCK_P, BLOCK_H, BLOCK_D, DQ_SCRATCH, PART_DESC,
                )  # fmt: skip
            # The next step's rows overlap these, maybe held by other threads of the CTA (PART_TMA:
            # written by bulk stores).
            if PART_DESC:
                bulk_stores_visible(u, UPCAST)
            else:
                tl.debug_barrier()

        if DQ_SCRATCH:  # the last step's stores are behind its barrier
            dq = tl.load(dq_slot + slot_offs)
        if DESC:  # the box clips rows past the sequence and the group, channels past D
            dq_desc.store([p0, 0, 0], tl.reshape((dq * scale).to(DQ.dtype.element_ty), [BLOCK_P, BLOCK_H, BLOCK_D]))
        else:
            dq_ptrs = query_rows(DQ, b, h0, r0, rp, rh, d, stride_dqb, stride_dqn, stride_dqh, 1)
            tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        if DQ_SCRATCH:  # the next tile's first step overwrites the slot other threads just read
            tl.debug_barrier()


@triton.jit
def layer_sum(P, offs, mask, layer, stride_sl, D, N_HBLK):
    """One scratch layer's rows at offs (head block 0's), summed over the N_HBLK head blocks."""
    base = P + tl.cast(layer, tl.int64) * stride_sl + offs
    acc = tl.load(base, mask=mask, other=0.0)
    for hb in range(1, N_HBLK):
        acc += tl.load(base + hb * D, mask=mask, other=0.0)
    return acc


@triton.jit(do_not_specialize=["ROWS", "stride_sl", "LAYERS"])
def _reduce_dkv2_kernel(
    DK2P, DV2P, DK2, DV2, COUNTS,
    ROWS, D, N_HBLK, LAYERS, stride_sl, stride_sn, stride_gn, stride_gh,
    scale,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """dk2 = scale * (sum over layers, then head blocks, of the scratch), dv2 likewise, for
    BLOCK_R absolute rows (batch / packing rows) of kv head program_id(1); a fixed order."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    g = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = (r < ROWS)[:, None] & (d < D)[None, :]
    offs = r[:, None] * stride_sn + (g * N_HBLK * D + d)[None, :]
    dk2 = layer_sum(DK2P, offs, mask, 0, stride_sl, D, N_HBLK)
    dv2 = layer_sum(DV2P, offs, mask, 0, stride_sl, D, N_HBLK)
    for layer in range(1, LAYERS):
        hit(COUNTS, P_LAYER_REPEAT, True, COUNT_PATHS)
        dk2 += layer_sum(DK2P, offs, mask, layer, stride_sl, D, N_HBLK)
        dv2 += layer_sum(DV2P, offs, mask, layer, stride_sl, D, N_HBLK)
    out = r[:, None] * stride_gn + (g * stride_gh + d)[None, :]
    tl.store(DK2 + out, (dk2 * scale).to(DK2.dtype.element_ty), mask=mask)
    tl.store(DV2 + out, dv2.to(DV2.dtype.element_ty), mask=mask)
