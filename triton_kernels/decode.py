r"""Decoding kernels (issue 16, CONTRACT §7): a few new query rows against ring-buffer caches.

The caches already hold the new tokens. Query t of sequence b sits at position
P = cache_seqlens[b] + t; its windows are causal, J(P) = [P - w1 + 1, P] and K(P) =
[P - w2 + 1, P] (positions >= 0), and position j lives in slot j % C1 of k1/v1, k lives in
slot k % C2 of k2/v2. A decode step has few rows (Nq * Hq / Hkv per kv head) but w1 * w2
pairs each, so the j window is split across programs (flash-decoding):

    _decode_split_kernel     grid (row block x split, kv head, batch): rows r = t * GROUP + h
                             of one kv head, j positions [base + s * SPLIT_J, + SPLIT_J) of
                             the rows' union window; the forward's loop order (offset u = P - k
                             outside, j-blocks inside, online softmax in natural units) gives
                             a partial (m, l, acc) per row and split, written to float32
                             scratch (empty splits write m = -inf, l = 0)
    _decode_combine_kernel   one program per row: out = sum_s e^(m_s - M) acc_s / L,
                             lse = M + ln L with M = max_s m_s, L = sum_s e^(m_s - M) l_s

The number of splits and the scratch size come from shapes and the device alone (never from
cache_seqlens), and nothing synchronises with the host, so a decode step can be captured in
a CUDA graph. Determinant logits as in fwd.py (a = k2 x q from permuted-channel loads).
"""

import triton
import triton.language as tl

from . import coverage
from .coverage import hit, hits
from .fwd import attend_offset
from .kv import head_rows, ring_rows, ring_slots
from .operand import chunk_shifts, pair_operand
from .softmax import exp_factor, exp_shifted, finite_max, natural_max, offset_rescale

# decode paths (coverage.py):
#   u_repeat / j_repeat    a second trip of the loop over offsets u = P - k / over j-blocks
#   j_tail                a j-block with positions past the split's chunk
#   k_before_0 / j_before_0  a row whose k = P - u, or a split whose chunk, starts before position 0
#   k1_wrapped / k2_wrapped  positions j >= C1 / k >= C2 read (the ring has wrapped)
#   block_wraps           a j-block whose slots wrap around the end of the k1/v1 ring inside it
#   split_repeat / split_empty  a split after the first with positions / with none (an empty partial)
#   rows_tail             a row block reaching past the Nq * GROUP rows
#   multi_token           Nq > 1;  gqa, d_tail, determinant as in coverage.COMMON
(
    P_U_REPEAT, P_J_REPEAT, P_J_TAIL, P_K_BEFORE_0, P_J_BEFORE_0, P_K1_WRAPPED, P_K2_WRAPPED, P_BLOCK_WRAPS,
    P_SPLIT_REPEAT, P_SPLIT_EMPTY, P_ROWS_TAIL, P_MULTI_TOKEN, P_GQA, P_D_TAIL, P_DET,
) = coverage.slots(
    ("decode",), "u_repeat", "j_repeat", "j_tail", "k_before_0", "j_before_0", "k1_wrapped", "k2_wrapped",
    "block_wraps", "split_repeat", "split_empty", "rows_tail", "multi_token", "gqa", "d_tail", "determinant",
    common=False,
)  # fmt: skip
#   combined / empty_partial   a row combining several splits / one of them empty;  d_tail
P_COMBINED, P_EMPTY_PARTIAL, P_COMBINE_D_TAIL = coverage.slots(
    ("decode_combine",), "combined", "empty_partial", "d_tail", common=False
)


@triton.jit
def _decode_split_kernel(
    Q, K1, K2, V1, V2, CACHE_SEQLENS, M_PART, L_PART, ACC_PART, COUNTS,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    NQ, HQ, GROUP, D, C1, C2, L1, L2, SPLIT_J, N_SPLITS,
    scale,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, DET: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr, NEG_SCALE: tl.constexpr = False,
):  # fmt: skip
    rb = tl.program_id(0) // N_SPLITS
    split = tl.program_id(0) % N_SPLITS
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    dt = K1.dtype.element_ty

    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < NQ * GROUP
    t = tl.minimum(rows, NQ * GROUP - 1) // GROUP
    h = g * GROUP + (rows % GROUP)
    start_pos = tl.load(CACHE_SEQLENS + b)
    pos = start_pos + t  # each row's position P
    p_first = start_pos + (rb * BLOCK_M) // GROUP
    p_last = tl.max(tl.where(row_ok, pos, 0), 0)
    # This split's chunk of the rows' union window [p_first - L1, p_last], clipped at 0.
    base = p_first - L1 + split * SPLIT_J
    j_lo = tl.maximum(base, 0)
    j_hi = tl.minimum(base + SPLIT_J - 1, p_last)
    u_hi = tl.minimum(L2, p_last)

    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)
    q_ptrs = Q + b * stride_qb + (t.to(tl.int64) * stride_qn + h * stride_qh)[:, None] + d[None, :] * stride_qd
    k1_base = head_rows(K1, b, g, 0, stride_k1b, stride_k1h, stride_k1n)
    v1_base = head_rows(V1, b, g, 0, stride_v1b, stride_v1h, stride_v1n)
    k2_base = head_rows(K2, b, g, 0, stride_k2b, stride_k2h, stride_k2n)
    v2_base = head_rows(V2, b, g, 0, stride_v2b, stride_v2h, stride_v2n)
    sh1, sh2 = chunk_shifts(d, D)  # determinant logits only
    hit(COUNTS, P_J_BEFORE_0, base < 0, COUNT_PATHS)
    hit(COUNTS, P_SPLIT_REPEAT, (split > 0) & (j_lo <= j_hi), COUNT_PATHS)
    hit(COUNTS, P_SPLIT_EMPTY, j_lo > j_hi, COUNT_PATHS)
    hit(COUNTS, P_ROWS_TAIL, rb * BLOCK_M + BLOCK_M > NQ * GROUP, COUNT_PATHS)
    hit(COUNTS, P_MULTI_TOKEN, NQ > 1, COUNT_PATHS)
    hit(COUNTS, P_GQA, GROUP > 1, COUNT_PATHS)
    hit(COUNTS, P_D_TAIL, D < BLOCK_D, COUNT_PATHS)
    hit(COUNTS, P_K1_WRAPPED, (j_lo <= j_hi) & (j_hi >= C1), COUNT_PATHS)
    hit(COUNTS, P_DET, DET, COUNT_PATHS)

    c = exp_factor(scale)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # raw logits (softmax.py)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if j_lo <= j_hi:
        # The forward's loop (fwd.py) on ring slots: every position P - u and j in slot p % C.
        for u in range(0, u_hi + 1):
            kpos = pos - u
            k_ok = row_ok & (kpos >= 0)
            kd_mask = k_ok[:, None] & d_ok[None, :]
            hit(COUNTS, P_U_REPEAT, u > 0, COUNT_PATHS)
            hits(COUNTS, P_K_BEFORE_0, row_ok & (kpos < 0), COUNT_PATHS)
            hits(COUNTS, P_K2_WRAPPED, k_ok & (kpos >= C2), COUNT_PATHS)
            k_slots = ring_slots(tl.where(k_ok, kpos, 0), C2)
            k2u = ring_rows(k2_base, k_slots, d[None, :] * stride_k2d, stride_k2n, kd_mask)
            q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
            a = pair_operand(q, k2u, d, sh1, sh2, dt, DET)
            if NEG_SCALE:  # as the forward's (fwd.py)
                a = -a
            m_start = m_i
            y, m_i, l_i = attend_offset(
                a, m_i, l_i, pos, k_ok, jr, j_lo, j_hi, L1, 0, c,
                k1_base, d[None, :] * stride_k1d, v1_base, d[None, :] * stride_v1d, stride_k1n, stride_v1n, C1, d_ok,
                COUNTS, P_J_REPEAT, P_J_TAIL, P_BLOCK_WRAPS, BLOCK_M, BLOCK_J, BLOCK_D, True,
                INPUT_PRECISION, UPCAST, COUNT_PATHS,
            )  # fmt: skip
            beta = offset_rescale(m_start, m_i, c)
            v2u = ring_rows(v2_base, k_slots, d[None, :] * stride_v2d, stride_v2n, kd_mask)
            acc = acc * beta[:, None] + y * v2u.to(tl.float32)

    # Partials of row (b, h, t) and this split, at ((b * HQ + h) * NQ + t) * N_SPLITS + split.
    part = ((b * HQ + h) * NQ + t) * N_SPLITS + split
    tl.store(M_PART + part, natural_max(m_i, scale), mask=row_ok)
    tl.store(L_PART + part, l_i, mask=row_ok)
    tl.store(ACC_PART + part[:, None] * D + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(
    M_PART, L_PART, ACC_PART, OUT, LSE, COUNTS,
    stride_ob, stride_on, stride_oh,
    stride_lb, stride_lh,
    NQ, HQ, D, N_SPLITS,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    """Row (b, h, t) = program (t, h, b): the splits' partials merged with their maxima."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    sp = tl.arange(0, BLOCK_S)
    sp_ok = sp < N_SPLITS
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    part = ((b * HQ + h) * NQ + t) * N_SPLITS + sp
    m_s = tl.load(M_PART + part, mask=sp_ok, other=float("-inf"))
    l_s = tl.load(L_PART + part, mask=sp_ok, other=0.0)
    acc_s = tl.load(ACC_PART + part[:, None] * D + d[None, :], mask=sp_ok[:, None] & d_ok[None, :], other=0.0)
    hit(COUNTS, P_COMBINED, N_SPLITS > 1, COUNT_PATHS)
    hits(COUNTS, P_EMPTY_PARTIAL, sp_ok & (l_s == 0.0), COUNT_PATHS)
    hit(COUNTS, P_COMBINE_D_TAIL, D < BLOCK_D, COUNT_PATHS)
    m = tl.max(m_s, 0)
    # Every row has a pair (the diagonal), so m is finite unless a logit is +-inf or NaN;
    # subtracting 0 then keeps an all -inf set of partials at weight 0 rather than NaN.
    w = exp_shifted(m_s, finite_max(m))
    l_tot = tl.sum(w * l_s, 0)
    out = tl.sum(w[:, None] * acc_s, 0) / l_tot
    lse = m + tl.log(l_tot)
    tl.store(OUT + b * stride_ob + t * stride_on + h * stride_oh + d, out.to(OUT.dtype.element_ty), mask=d_ok)
    tl.store(LSE + b * stride_lb + h * stride_lh + t, lse)
