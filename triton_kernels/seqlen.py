"""Sequence span: which rows of the batch or the packing one program's sequence holds.

    batched   q [B, N, ...]   sequence b = tl.program_id(2) is rows [0, N) of batch b
    packed    q [1, T, ...]   sequence s = tl.program_id(2) is rows [cu[s], cu[s+1]) of the one row

Every position, mask and window inside a kernel is relative to its sequence, [0, n); only the
addresses add the sequence's first row (`start`). The launchers pass batch strides 0 for a
packing, so the batch index adds nothing there.
"""

import triton
import triton.language as tl


@triton.jit
def sequence_span(CU_SEQLENS, N, VARLEN: tl.constexpr):
    """(start, n): the first row and the length of this program's sequence (grid axis 2);
    start is int64 when packed (VARLEN), 0 when batched."""
    if VARLEN:
        s = tl.program_id(2)
        first = tl.load(CU_SEQLENS + s)
        start = first.to(tl.int64)
        n = tl.load(CU_SEQLENS + s + 1) - first
    else:
        start = 0
        n = N
    return start, n
