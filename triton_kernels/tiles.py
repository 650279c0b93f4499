r"""The tiles the fused kernels own, and the loop bounds of each: one prologue per tile kind.

Query tile (fwd, bwd_dqkv2): BLOCK_M rows of one kv head group. A row is a (position, query head)
pair: BLOCK_P = BLOCK_M // BLOCK_H consecutive positions times BLOCK_H heads sharing kv head g.

    sequence tiling (BLOCK_H = 1)           head packing (BLOCK_H = 64, BLOCK_P = 1)
    rows = positions p0 .. p0+63 of head h  rows = heads g*R .. g*R+63 at position p0

Head packing is for GQA with many query heads per kv head (Hq / Hkv >= 16): every row then has
the same windows, so no tensor-core work is spent on pairs outside them.

KV tile (bwd_dkv1): BLOCK consecutive positions of one kv head (k1/v1 rows).

Both prologues find the program's sequence (seqlen.sequence_span) and count the common paths;
the kernel then exits at once when its tile starts past the sequence's end (`if p0 >= n:
return`, which a helper cannot do for it).
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import count_common, hit, hits
from .kv import block_leaves_storage, head_rows, tile_offsets
from .seqlen import sequence_span

#   u_repeat / j_repeat   a second (third, ...) trip of the u / j loop
#   k_outside            a row whose k = i - u lies outside [0, N) (k2/v2 rows zero-filled)
#   j_tail / j_past_n     a j-block with rows past the tile's j range / past N (zero-filled)
#   head_packed          BLOCK_H > 1;  head_tail: rows past the group's last head (masked)
P_U_REPEAT, P_K_OUTSIDE, P_J_REPEAT, P_J_TAIL, P_J_PAST_N, P_HEAD_PACKED, P_HEAD_TAIL = coverage.slots(
    ("fwd", "bwd_dqkv2"), "u_repeat", "k_outside", "j_repeat", "j_tail", "j_past_n", "head_packed", "head_tail"
)
#   j_edge / j_interior   (fwd) a masked j-block / an interior one, every pair of it inside (interior_blocks)
P_J_EDGE, P_J_INTERIOR = coverage.slots(("fwd",), "j_edge", "j_interior")


@triton.jit
def query_tile(
    CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """The rows of this program in fwd: row r is position pos[r] = p0 + rp[r] of query head
    h0 + rh[r], all sharing kv head g; row_ok is False past the sequence or the group.

    Returns (start, n, p0, g, b, h0, rp, rh, pos, row_ok): the sequence's first row and length
    (seqlen.sequence_span), positions relative to it; b and h0 are int64 (address bases)."""
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    g, b, h0, rp, rh, head_ok = query_tile_heads(GROUP, BLOCK_M, BLOCK_H)
    p0 = tl.program_id(0) * (BLOCK_M // BLOCK_H)
    pos, row_ok = query_tile_positions(
        COUNTS, p0, n, rp, head_ok, D, GROUP, R1, R2, BLOCK_M, BLOCK_H, BLOCK_D, VARLEN, DET, COUNT_PATHS
    )
    return start, n, p0, g, b, h0, rp, rh, pos, row_ok


@triton.jit
def query_tile_heads(GROUP, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """The heads of this program's query tiles (fwd, and every tile of a bwd_dqkv2 span): row r
    is head h0 + rh[r] at tile position rp[r], heads block program_id(1) % n_hblk of kv head g
    (head_ok False past the group), batch b. Returns (g, b, h0, rp, rh, head_ok); b and h0 int64."""
    n_hblk = tl.cdiv(GROUP, BLOCK_H)
    g = tl.program_id(1) // n_hblk
    hb = tl.program_id(1) % n_hblk
    b = tl.program_id(2).to(tl.int64)
    h0 = g.to(tl.int64) * GROUP + hb * BLOCK_H
    rows = tl.arange(0, BLOCK_M)
    rp = rows // BLOCK_H
    rh = rows % BLOCK_H
    return g, b, h0, rp, rh, hb * BLOCK_H + rh < GROUP


@triton.jit
def query_tile_positions(
    COUNTS, p0, n, rp, head_ok, D, GROUP, R1, R2,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr, DET: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """The positions pos = p0 + rp of the query tile at p0 and its valid rows (inside the
    sequence and the group), counting the tile's paths. Returns (pos, row_ok)."""
    BLOCK_P: tl.constexpr = BLOCK_M // BLOCK_H
    pos = p0 + rp
    row_ok = (pos < n) & head_ok
    count_common(COUNTS, p0, n, D, GROUP, R1, R2, BLOCK_P, BLOCK_D, VARLEN, DET, COUNT_PATHS)
    if BLOCK_H > 1:
        hit(COUNTS, P_HEAD_PACKED, p0 < n, COUNT_PATHS)
    hits(COUNTS, P_HEAD_TAIL, (pos < n) & ~row_ok, COUNT_PATHS)
    return pos, row_ok


@triton.jit
def query_tile_kv(
    K1, K2, V1, V2, b, g, start, rp, jr, d,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d, stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d, stride_v2b, stride_v2n, stride_v2h, stride_v2d,
):  # fmt: skip
    """Addresses of a query tile's kv rows (kv.rows_at): bases and in-tile offsets of the k1/v1
    j-blocks (rows j0 + jr from the sequence's start) and of the k2/v2 rows of an offset u (rows
    r0 - u + rp, r0 the tile's first row). Returns (k1_base, k1_offs, v1_base, v1_offs, k2_base,
    k2_offs, v2_base, v2_offs)."""
    k1_offs, v1_offs = tile_offsets(jr, d, stride_k1n, stride_k1d), tile_offsets(jr, d, stride_v1n, stride_v1d)
    k2_offs, v2_offs = tile_offsets(rp, d, stride_k2n, stride_k2d), tile_offsets(rp, d, stride_v2n, stride_v2d)
    k1_base = head_rows(K1, b, g, start, stride_k1b, stride_k1h, stride_k1n)
    v1_base = head_rows(V1, b, g, start, stride_v1b, stride_v1h, stride_v1n)
    k2_base = head_rows(K2, b, g, 0, stride_k2b, stride_k2h, stride_k2n)
    v2_base = head_rows(V2, b, g, 0, stride_v2b, stride_v2h, stride_v2n)
    return k1_base, k1_offs, v1_base, v1_offs, k2_base, k2_offs, v2_base, v2_offs


@triton.jit
def query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_P: tl.constexpr):
    """Loop bounds of a query tile whose positions span [p0, p0 + BLOCK_P): only offsets u that
    put some k = i - u inside [0, n), and only j in the union of the rows' J(i).

    Returns (u_lo, u_hi, j_lo, j_hi), all inclusive."""
    p_last = tl.minimum(p0 + BLOCK_P - 1, n - 1)
    u_lo = tl.maximum(-R2, p0 - n + 1)
    u_hi = tl.minimum(L2, p_last)
    j_lo = tl.maximum(p0 - L1, 0)
    j_hi = tl.minimum(p_last + R1, n - 1)
    return u_lo, u_hi, j_lo, j_hi


@triton.jit
def interior_blocks(p0, u, n, j_lo, L1, R1, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    """[ja, jb): the interior j-blocks of offset u of the query tile at positions [p0, p0 +
    BLOCK_P), on the grid j_lo + t * BLOCK_J of its j loop. A block is interior when every pair
    of it counts for every position of the tile: its rows lie in [0, n) and in every J(i),
    i.e. in [p_last - L1, p0 + R1] (p_last the tile's last position inside the sequence), and
    every k = i - u lies in [0, n). Rows past the sequence or the group are never stored, so
    they need no mask (their operand is zero-filled). From scalars only; j_lo <= ja <= jb."""
    p_last = tl.minimum(p0 + BLOCK_P - 1, n - 1)
    lo = tl.maximum(p_last - L1, j_lo)  # the first j of every window, >= j_lo
    end = tl.minimum(p0 + R1, n - 1) + 1  # past the last j of every window, > j_lo
    t_a = (lo - j_lo + BLOCK_J - 1) // BLOCK_J
    t_b = (end - j_lo) // BLOCK_J
    every_k = (u <= p0) & (p_last - u < n)
    t_b = tl.where(every_k, tl.maximum(t_a, t_b), t_a)
    return j_lo + t_a * BLOCK_J, j_lo + t_b * BLOCK_J


@triton.jit
def offset_rows(pos, u, row_ok, n, d_ok, u_lo, COUNTS, COUNT_PATHS: tl.constexpr):
    """The rows of a query tile whose k = pos - u lies in [0, n) for offset u, and that [rows, D]
    mask (k2/v2 rows outside are zero-filled)."""
    kpos = pos - u
    k_ok = row_ok & (kpos >= 0) & (kpos < n)
    hit(COUNTS, P_U_REPEAT, u > u_lo, COUNT_PATHS)
    hits(COUNTS, P_K_OUTSIDE, row_ok & ~k_ok, COUNT_PATHS)
    return k_ok, k_ok[:, None] & d_ok[None, :]


@triton.jit
def j_block(
    j0, jr, j_lo, j_hi, limit, d_ok, COUNTS,
    REPEAT: tl.constexpr, TAIL: tl.constexpr, EDGE: tl.constexpr,
    BLOCK_J: tl.constexpr, RING: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """Positions js of the j-block at j0 of the j range [j_lo, j_hi], which of them are inside
    it, and that [j, D] mask (k1/v1 rows outside are zero-filled). Counts a second trip (path
    REPEAT), a block past j_hi (TAIL) and one leaving its rows (EDGE, kv.block_leaves_storage:
    past the sequence's `limit` rows, or around a ring of `limit` slots)."""
    js = j0 + jr
    j_ok = js <= j_hi
    hit(COUNTS, REPEAT, j0 > j_lo, COUNT_PATHS)
    hit(COUNTS, TAIL, j0 + BLOCK_J - 1 > j_hi, COUNT_PATHS)
    hit(COUNTS, EDGE, block_leaves_storage(j0, j_hi, limit, BLOCK_J, RING), COUNT_PATHS)
    return js, j_ok, j_ok[:, None] & d_ok[None, :]


@triton.jit
def kv_tile(
    CU_SEQLENS, COUNTS, N, GROUP, D, R1, R2,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, DET: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """The tile of this program in bwd_dkv1: positions t0 + r, r < BLOCK, of one kv
    head. Returns (start, n, t0): the sequence's first row and length, the tile's first
    position (kv_tile_rows: the rest, once the kernel has not exited)."""
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    t0 = tl.program_id(0) * BLOCK
    count_common(COUNTS, t0, n, D, GROUP, R1, R2, BLOCK, BLOCK_D, VARLEN, DET, COUNT_PATHS)
    return start, n, t0


@triton.jit
def kv_tile_rows(start, n, t0, BLOCK: tl.constexpr):
    """(g, b, r0, rows, ok) of a kv tile: kv head and batch (int64), the tile's first row (int64,
    start + t0), its row indices and which lie inside the sequence."""
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    r0 = tl.cast(t0, tl.int64) + start
    rows = tl.arange(0, BLOCK)
    return g, b, r0, rows, t0 + rows < n


@triton.jit
def store_kv_tile(DK, DV, dk, dv, scale, b, g, r0, rows, d, mask, stride_b, stride_n, stride_h):
    """Stores a kv tile's two gradients, dk times scale (contiguous channels, the strides of DK
    and DV alike)."""
    offs = b * stride_b + g * stride_h + r0 * stride_n + (rows[:, None] * stride_n + d[None, :])
    tl.store(DK + offs, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)
