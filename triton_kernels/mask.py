r"""Window masks. Every window is a band around the query position i (simplicial_attn/problem.py):

    J(i) = [i - L1, i + R1]   (k1/v1 positions j)      K(i) = [i - L2, i + R2]   (k2/v2 positions k)

    causal:   L = w - 1,  R = 0                       centred:  L = w // 2,  R = w - 1 - w // 2

clipped to the sequence [0, n). The launchers read (L, R) from the call's Problem (prob.band1,
prob.band2), so one code path serves both modes.
"""

import triton
import triton.language as tl  # noqa: F401  (the interpreter patches `tl` in every jit function's module)


@triton.jit
def in_band(ok, x, center, L, R):
    """ok and x in the band [center - L, center + R] (element-wise, broadcasting)."""
    return ok & (x >= center - L) & (x <= center + R)


@triton.jit
def j_window_mask(row_ok, pos, j_ok, js, L1, R1):
    """[rows, j] mask of the pairs that count: the row and j are valid and j is in
    J(pos) = [pos - L1, pos + R1]."""
    return in_band(row_ok[:, None] & j_ok[None, :], js[None, :], pos[:, None], L1, R1)
