r"""The backward's preprocess: Delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d], float32.

Delta is per row, so a packed layout is one batch of all T rows here.
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import hit

# last_tile: rows past N (masked, zero-filled); d_tail: channels past D (see coverage.py).
P_LAST_TILE, P_D_TAIL = coverage.slots(("bwd_delta",), "last_tile", "d_tail", common=False)


@triton.jit(do_not_specialize=["N", "stride_lh"])
def _delta_kernel(
    OUT, DOUT, DELTA, COUNTS,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_lb, stride_lh,
    N, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """Delta = rowsum(dout * out) in float32: one read of each row, one write per row."""
    hit(COUNTS, P_LAST_TILE, (tl.program_id(0) + 1) * BLOCK_N > N, COUNT_PATHS)
    hit(COUNTS, P_D_TAIL, D < BLOCK_D, COUNT_PATHS)
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    i64 = i.to(tl.int64)[:, None]
    mask = (i < N)[:, None] & (d < D)[None, :]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + i64 * stride_on + d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(
        DOUT + b * stride_dob + h * stride_doh + i64 * stride_don + d[None, :] * stride_dod, mask=mask, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * stride_lb + h * stride_lh + i.to(tl.int64), delta, mask=i < N)
