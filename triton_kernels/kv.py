r"""Addressing of the input rows: batched, packed and ring layouts.

A tile is addressed as a 64-bit scalar base (batch, head, first row) plus 32-bit offsets inside
the tile; the launchers guarantee those fit (host.int32_tiles).

    batched   row p of sequence b        X + b * stride_b + p * stride_n
    packed    row p of sequence s        X + (cu[s] + p) * stride_n           (batch stride 0)
    ring      position p of sequence b   X + b * stride_b + (p % C) * stride_n  (a cache of C slots)

The forward may read its k1/v1 j-blocks through a tensor descriptor instead (TMA on sm_90 /
sm_100: one bulk copy a block, no per-element addresses or masks; `row_descriptor`,
`block_rows`): rows of a linear layout from a 16-byte aligned base with 16-byte aligned row
strides and contiguous channels (the launcher checks, else pointer loads).
"""

import triton
import triton.language as tl


@triton.jit
def head_rows(X, b, g, start, stride_b, stride_h, stride_n):
    """The base of head g of batch b at row `start` (the sequence's first row, or 0)."""
    return X + b * stride_b + g.to(tl.int64) * stride_h + start * stride_n


@triton.jit
def tile_offsets(r, d, stride_n, stride_d):
    """In-tile offsets [rows, channels] of rows r and channels d."""
    return r[:, None] * stride_n + d[None, :] * stride_d


@triton.jit
def query_rows(X, b, h0, r0, rp, rh, d, stride_b, stride_n, stride_h, stride_d):
    """Pointers to the rows of a query tile (tiles.query_tile): position r0 + rp[r] of head
    h0 + rh[r], channels d."""
    base = X + b * stride_b + h0 * stride_h + r0 * stride_n
    return base + (rp[:, None] * stride_n + rh[:, None] * stride_h + d[None, :] * stride_d)


@triton.jit
def row_block_ptrs(X, b, g, start, stride_b, stride_n, stride_h, stride_d, r, d):
    """Pointers to rows start + r, channels d of X[b, :, g, :]."""
    return head_rows(X, b, g, start, stride_b, stride_h, stride_n) + tile_offsets(r, d, stride_n, stride_d)


@triton.jit
def rows_at(base, first, offs, stride_n, mask):
    """The rows first + r of a linear layout (batched, packed: `base` at the sequence's first
    row, `offs` the rows' in-tile offsets from tile_offsets), zero where `mask` is False."""
    return tl.load(base + tl.cast(first, tl.int64) * stride_n + offs, mask=mask, other=0.0)


@triton.jit
def ring_slots(pos, C):
    """The slots of positions `pos` (>= 0) in a ring of C slots."""
    return pos % C


@triton.jit
def ring_rows(base, slots, offs, stride_n, mask):
    """The rows in ring slots `slots` (ring_slots), `offs` the channels' offsets ([1, channels]),
    zero where `mask` is False."""
    return tl.load(base + (slots.to(tl.int64) * stride_n)[:, None] + offs, mask=mask, other=0.0)


@triton.jit
def block_leaves_storage(j0, j_hi, limit, BLOCK: tl.constexpr, RING: tl.constexpr):
    """The block [j0, j0 + BLOCK) reaches past the end of its rows: past the sequence's `limit`
    rows (linear), or around the end of a ring of `limit` slots (RING; up to j_hi)."""
    if RING:
        return (j0 % limit) > (tl.minimum(j0 + BLOCK - 1, j_hi) % limit)
    return j0 + BLOCK > limit


@triton.jit
def row_descriptor(base, rows, D, stride_n, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """A tensor descriptor of the `rows` rows of D contiguous channels from `base` (a linear
    layout's first row, kv.head_rows), read in [BLOCK_R, BLOCK_D] boxes: a box's rows past `rows`
    and channels past D are zero-filled, as rows_at's mask would leave them. Base and row stride
    must be 16-byte aligned (launch.py checks)."""
    return tl.make_tensor_descriptor(base, shape=[rows, D], strides=[stride_n, 1], block_shape=[BLOCK_R, BLOCK_D])


@triton.jit
def block_rows(src, first, offs, stride_n, mask, TMA: tl.constexpr):
    """The rows first + r of a linear layout: through the tensor descriptor `src` (TMA; its shape
    zero-fills), or with rows_at from the base pointer `src` (offs, mask as there)."""
    if TMA:
        rows = src.load([first, 0])
    else:
        rows = rows_at(src, first, offs, stride_n, mask)
    return rows


@triton.jit
def query_descriptor(
    base, positions, heads, D, stride_n, stride_h,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """A tensor descriptor of a query-like tensor's [positions, heads, D] rows from `base` (the
    sequence's first position of the tile's first head), read in [BLOCK_P, BLOCK_H, BLOCK_D]
    boxes: a query tile's rows (tiles.query_tile) whatever Hq, one bulk copy instead of [rows, D]
    per-element addresses. Positions past `positions`, heads past `heads` and channels past D
    are zero-filled, as row_ok / d_ok masks leave them. Base and both strides must be 16-byte
    aligned (launch.py checks)."""
    return tl.make_tensor_descriptor(
        base, shape=[positions, heads, D], strides=[stride_n, stride_h, 1], block_shape=[BLOCK_P, BLOCK_H, BLOCK_D]
    )


@triton.jit
def query_box(desc, p0, p_ok, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The query tile at position p0 through `desc` (query_descriptor), as [BLOCK_M, BLOCK_D] rows
    in the tile's order (row r: position p0 + r // BLOCK_H, head r % BLOCK_H), zero at the
    positions where p_ok [BLOCK_P] is False (one select per position, before the reshape)."""
    return tl.reshape(tl.where(p_ok[:, None, None], desc.load([p0, 0, 0]), 0.0), [BLOCK_M, BLOCK_D])
