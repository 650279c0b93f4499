r"""The softmax over the joint (j, k) window, in float32 and in NATURAL units (issue 14).

Logits z = scale * s, the running max m and lse are natural logs, and every exponent is
exp2((z - m) * log2(e)), the subtraction first, so it stays exact near the max at any logit
magnitude. Never fma(z, log2e, -m * log2e): the rounding of m * log2e would go straight into
the exponent (1e-4 relative at |m| ~ 1e3).

The forward's online softmax (issue 23) keeps its running max in RAW logits s (the product,
before the scale): with scale > 0 (the launcher negates the pair operand where scale < 0, an
exact sign flip of s), max z = fl(scale * max s), and every exponent is exp2((s - m_s) * c),
c = fl(|scale| * log2(e)): still the subtraction first, one multiply where there were two
(fl(scale * s), then log2(e)), and the scale's rounding enters in proportion to the exponent,
not to |m| (relative 2^-23 of it: harmless, as the exponent's own rounding). The epilogue turns
the max back to natural units (`natural_max`) for lse; decoding's partials are natural too.

Forward (online, per query row): per j-block `online_block` raises the max and rescales the
running sum l and the partial sum y of one offset u; the accumulator is rescaled once per
offset (`offset_rescale`); the epilogue divides and stores lse = fl(m + ln l) with its rounding
residual lse_lo = fl((m - lse) + ln l) (m - lse is exact; `final_sum`, `final_lse`). Backward: every kernel recomputes P
from the forward's lse and lse_lo (`recomputed_probs`, `recomputed_block`).
"""

import triton
import triton.language as tl

from .operand import mma


@triton.jit
def exp_shifted(x, m):
    """exp(x - m) for a logit x and a running max m, both in natural units: subtract first."""
    return tl.exp2((x - m) * 1.4426950408889634)


@triton.jit
def exp_scaled(s, m, c):
    """exp(|scale| * (s - m)) for a raw logit s and a running max m of raw logits, c = |scale|
    * log2(e) (exp_factor): subtract first."""
    return tl.exp2((s - m) * c)


@triton.jit
def exp_factor(scale):
    """c = |scale| * log2(e): the factor from a difference of raw logits to a base-2 exponent."""
    return tl.abs(scale) * 1.4426950408889634


@triton.jit
def natural_max(m, scale):
    """A running max of raw logits in natural units: fl(|scale| * m), the max of the forward's
    z = fl(scale * s) (rounding is monotonic); -inf stays -inf (a row that saw no pair) at any
    scale, 0 included."""
    return tl.where(m == float("-inf"), m, m * tl.abs(scale))


@triton.jit
def finite_max(m):
    """The max to subtract: 0 where a row has seen nothing in its window yet (m = -inf), which
    keeps exp2 at 0 there rather than NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def online_block(
    s, in_win, v1b, y, m_i, l_i, c, dt, MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr
):
    """One j-block of the online softmax: raw logits s [rows, j] (MASKED: pairs outside
    `in_win` drop out; else every pair counts), their v1 rows v1b [j, D]; running max m_i of raw
    logits, c = exp_factor(scale). Returns (y, m_i, l_i) updated: y = y * alpha + P @ v1b,
    l = l * alpha + rowsum(P), alpha = exp(|scale| (m_old - m_new)), P = exp(|scale| (s - m_new))."""
    if MASKED:
        s = tl.where(in_win, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_sub = finite_max(m_new)
    alpha = exp_scaled(m_i, m_sub, c)
    p = exp_scaled(s, m_sub[:, None], c)
    l_i = l_i * alpha + tl.sum(p, 1)
    y = mma(p.to(dt), v1b, y * alpha[:, None], INPUT_PRECISION, UPCAST)
    return y, m_new, l_i


@triton.jit
def offset_rescale(m_start, m_i, c):
    """The factor that brings the accumulator, in the scale of m_start (the max of raw logits
    before an offset u's j loop), to that of the offset's partial sum y (the max m_i after it):
    the offset then adds acc * beta + y * v2[i - u]."""
    return exp_scaled(m_start, finite_max(m_i), c)


@triton.jit
def final_sum(l_i):
    """The row sums to divide by. Rows past the sequence or the group never see a pair (l = 0)
    and are not stored; 1 keeps them finite. A NaN l (a NaN logit: tl.max skips NaN, so m stays
    finite) must stay NaN: it makes lse NaN, which the backward needs so that dv1 / dv2 turn NaN
    as the reference's do (they read P only, not Delta)."""
    return tl.where(l_i == 0.0, 1.0, l_i)


@triton.jit
def final_lse(m_i, l_i):
    """(lse, lse_lo) of rows with max m_i and (final_sum) sum l_i. Where lse is not finite it
    carries the NaN / inf alone (lse_lo = 0); the inner selects keep rows that saw no pair
    (m = -inf, never stored) from computing -inf - -inf."""
    ln_l = tl.log(l_i)
    lse = m_i + ln_l
    finite = tl.abs(lse) < float("inf")
    lse_lo = tl.where(finite, (tl.where(finite, m_i, 0.0) - tl.where(finite, lse, 0.0)) + ln_l, 0.0)
    return lse, lse_lo


@triton.jit
def recomputed_p(t):
    """P = exp(t) of a backward's recomputed shifted logit t = z - lse (natural units, -inf
    outside the window). A true P never exceeds 1, so t is clamped at 0: a recomputation that
    rounds above the forward's can never overflow. A select, not tl.minimum, so NaN stays NaN."""
    return tl.exp2(tl.where(t > 0, 0.0, t) * 1.4426950408889634)


@triton.jit
def per_row(x, ROWS: tl.constexpr):
    """x broadcast over a block's columns: a vector of one value per row (ROWS), or a scalar."""
    if ROWS:
        x = x[:, None]
    return x


@triton.jit
def recomputed_probs(s, in_win, lse, lse_lo, scale, ROWS: tl.constexpr):
    """The backward's P from raw logits s and the forward's lse, lse_lo (per_row):
    exp(min((z - lse) - lse_lo, 0)), 0 outside `in_win`. The select forms z = fl(s * scale) as
    the forward does (no fused multiply-add)."""
    z = tl.where(in_win, s * scale, 0.0)
    return recomputed_p(tl.where(in_win, (z - per_row(lse, ROWS)) - per_row(lse_lo, ROWS), float("-inf")))


@triton.jit
def recomputed_block(
    s, in_win, bo, v1b, lse, lse_lo, delta, scale,
    ROWS: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """(P, dA) of one block of the backward from its raw logits s: P recomputed from the
    forward's lse and lse_lo (recomputed_probs), dP = bo @ v1b^T, dA = P * (dP - Delta); lse,
    lse_lo and delta one per row of the block (ROWS) or scalars."""
    p = recomputed_probs(s, in_win, lse, lse_lo, scale, ROWS)
    dp = mma(bo, tl.trans(v1b), tl.zeros(s.shape, tl.float32), INPUT_PRECISION, UPCAST)
    return p, p * (dp - per_row(delta, ROWS))
