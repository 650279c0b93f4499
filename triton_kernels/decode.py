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

import torch
import triton
import triton.language as tl

from . import configs, paths
from ._common import (
    arch_of,
    block_d,
    channels_at,
    check_tensors,
    chunk_shifts,
    device_guard,
    exp_shifted,
    input_precision,
    is_interpreting,
    j_window_mask,
    mma,
)

# decode paths (paths.py):
#   u_repeat / j_repeat    a second trip of the loop over offsets u = P - k / over j-blocks
#   j_tail                a j-block with positions past the split's chunk
#   k_before_0 / j_before_0  a row whose k = P - u, or a split whose chunk, starts before position 0
#   k1_wrapped / k2_wrapped  positions j >= C1 / k >= C2 read (the ring has wrapped)
#   block_wraps           a j-block whose slots wrap around the end of the k1/v1 ring inside it
#   split_repeat / split_empty  a split after the first with positions / with none (an empty partial)
#   rows_tail             a row block reaching past the Nq * GROUP rows
#   multi_token           Nq > 1;  gqa, d_tail, determinant as in paths.COMMON
(
    P_U_REPEAT, P_J_REPEAT, P_J_TAIL, P_K_BEFORE_0, P_J_BEFORE_0, P_K1_WRAPPED, P_K2_WRAPPED, P_BLOCK_WRAPS,
    P_SPLIT_REPEAT, P_SPLIT_EMPTY, P_ROWS_TAIL, P_MULTI_TOKEN, P_GQA, P_D_TAIL, P_DET,
) = paths.slots(
    ("decode",), "u_repeat", "j_repeat", "j_tail", "k_before_0", "j_before_0", "k1_wrapped", "k2_wrapped",
    "block_wraps", "split_repeat", "split_empty", "rows_tail", "multi_token", "gqa", "d_tail", "determinant",
    common=False,
)  # fmt: skip
#   combined / empty_partial   a row combining several splits / one of them empty;  d_tail
P_COMBINED, P_EMPTY_PARTIAL, P_COMBINE_D_TAIL = paths.slots(
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
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
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
    k1_base = K1 + b * stride_k1b + g * stride_k1h
    v1_base = V1 + b * stride_v1b + g * stride_v1h
    k2_base = K2 + b * stride_k2b + g * stride_k2h
    v2_base = V2 + b * stride_v2b + g * stride_v2h
    if DET:
        sh1, sh2 = chunk_shifts(d, D)
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        tl.atomic_add(COUNTS + P_J_BEFORE_0, tl.where(base < 0, 1, 0))
        tl.atomic_add(COUNTS + P_SPLIT_REPEAT, tl.where((split > 0) & (j_lo <= j_hi), 1, 0))
        tl.atomic_add(COUNTS + P_SPLIT_EMPTY, tl.where(j_lo > j_hi, 1, 0))
        tl.atomic_add(COUNTS + P_ROWS_TAIL, tl.where(rb * BLOCK_M + BLOCK_M > NQ * GROUP, 1, 0))
        tl.atomic_add(COUNTS + P_MULTI_TOKEN, tl.where(NQ > 1, 1, 0))
        tl.atomic_add(COUNTS + P_GQA, tl.where(GROUP > 1, 1, 0))
        tl.atomic_add(COUNTS + P_D_TAIL, tl.where(D < BLOCK_D, 1, 0))
        tl.atomic_add(COUNTS + P_K1_WRAPPED, tl.where((j_lo <= j_hi) & (j_hi >= C1), 1, 0))
        if DET:
            tl.atomic_add(COUNTS + P_DET, 1)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if j_lo <= j_hi:
        for u in range(0, u_hi + 1):
            kpos = pos - u
            k_ok = row_ok & (kpos >= 0)
            kd_mask = k_ok[:, None] & d_ok[None, :]
            if COUNT_PATHS:
                tl.atomic_add(COUNTS + P_U_REPEAT, tl.where(u > 0, 1, 0))
                tl.atomic_add(COUNTS + P_K_BEFORE_0, tl.sum(tl.where(row_ok & (kpos < 0), 1, 0)))
                tl.atomic_add(COUNTS + P_K2_WRAPPED, tl.sum(tl.where(k_ok & (kpos >= C2), 1, 0)))
            k_slot = (tl.where(k_ok, kpos, 0) % C2).to(tl.int64)
            k2u = tl.load(k2_base + (k_slot * stride_k2n)[:, None] + d[None, :] * stride_k2d, mask=kd_mask, other=0.0)
            q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
            if DET:  # a = k2 x q per chunk, channels permuted in registers, as in the forward
                k2_1, k2_2 = channels_at(k2u, d, sh1).to(tl.float32), channels_at(k2u, d, sh2).to(tl.float32)
                a = (k2_1 * channels_at(q, d, sh2).to(tl.float32) - k2_2 * channels_at(q, d, sh1).to(tl.float32)).to(dt)
            else:
                a = (q.to(tl.float32) * k2u.to(tl.float32)).to(dt)
            m_start = m_i
            y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for j0 in range(j_lo, j_hi + 1, BLOCK_J):
                js = j0 + jr
                j_ok = js <= j_hi
                if COUNT_PATHS:
                    tl.atomic_add(COUNTS + P_J_REPEAT, tl.where(j0 > j_lo, 1, 0))
                    tl.atomic_add(COUNTS + P_J_TAIL, tl.where(j0 + BLOCK_J - 1 > j_hi, 1, 0))
                    wraps = (j0 % C1) > (tl.minimum(j0 + BLOCK_J - 1, j_hi) % C1)
                    tl.atomic_add(COUNTS + P_BLOCK_WRAPS, tl.where(wraps, 1, 0))
                j_slot = (js % C1).to(tl.int64)[:, None]
                jd_mask = j_ok[:, None] & d_ok[None, :]
                k1b = tl.load(k1_base + j_slot * stride_k1n + d[None, :] * stride_k1d, mask=jd_mask, other=0.0)
                v1b = tl.load(v1_base + j_slot * stride_v1n + d[None, :] * stride_v1d, mask=jd_mask, other=0.0)
                s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
                s = s * scale
                in_win = j_window_mask(k_ok, pos, j_ok, js, L1, 0)
                s = tl.where(in_win, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = exp_shifted(m_i, m_sub)
                p = exp_shifted(s, m_sub[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                y = mma(p.to(dt), v1b, y * alpha[:, None], INPUT_PRECISION, UPCAST)
                m_i = m_new
            beta = exp_shifted(m_start, tl.where(m_i == float("-inf"), 0.0, m_i))
            v2u = tl.load(v2_base + (k_slot * stride_v2n)[:, None] + d[None, :] * stride_v2d, mask=kd_mask, other=0.0)
            acc = acc * beta[:, None] + y * v2u.to(tl.float32)

    # Partials of row (b, h, t) and this split, at ((b * HQ + h) * NQ + t) * N_SPLITS + split.
    part = ((b * HQ + h) * NQ + t) * N_SPLITS + split
    tl.store(M_PART + part, m_i, mask=row_ok)
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
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        tl.atomic_add(COUNTS + P_COMBINED, tl.where(N_SPLITS > 1, 1, 0))
        tl.atomic_add(COUNTS + P_EMPTY_PARTIAL, tl.sum(tl.where(sp_ok & (l_s == 0.0), 1, 0)))
        tl.atomic_add(COUNTS + P_COMBINE_D_TAIL, tl.where(D < BLOCK_D, 1, 0))
    m = tl.max(m_s, 0)
    # Every row has a pair (the diagonal), so m is finite unless a logit is +-inf or NaN;
    # subtracting 0 then keeps an all -inf set of partials at weight 0 rather than NaN.
    w = exp_shifted(m_s, tl.where(m == float("-inf"), 0.0, m))
    l_tot = tl.sum(w * l_s, 0)
    out = tl.sum(w[:, None] * acc_s, 0) / l_tot
    lse = m + tl.log(l_tot)
    tl.store(OUT + b * stride_ob + t * stride_on + h * stride_oh + d, out.to(OUT.dtype.element_ty), mask=d_ok)
    tl.store(LSE + b * stride_lb + h * stride_lh + t, lse)


def _num_splits(q, windows_len, block_j, programs_per_split, num_splits):
    """Splits of the j window: enough programs to fill the device (4 per SM; 2 when
    interpreting, so tests still see several), at most one j-block each. From shapes and the
    device only, never from cache lengths (CUDA-graph capture)."""
    chunks = triton.cdiv(windows_len, block_j)
    if num_splits is not None:
        return max(1, min(num_splits, chunks))
    if q.is_cuda:
        target = 4 * torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        target = 2
    return max(1, min(chunks, triton.cdiv(target, programs_per_split), configs.MAX_DECODE_SPLITS))


def decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob, *, allow_tf32=False, num_splits=None, config=None):
    """(out, lse): out [B, Nq, Hq, D] in q's dtype, lse [B, Hq, Nq] float32 (natural log).

    q [B, Nq, Hq, D]; k1_cache, v1_cache [B, C1, Hkv, D]; k2_cache, v2_cache [B, C2, Hkv, D],
    any strides, already holding the new tokens; prob.cache_seqlens int32 [B] (CONTRACT §7);
    prob.band1, prob.band2 causal bands (right == 0). `num_splits` fixes the number of j-window splits
    (tests); by default it follows the shapes and the device (see _num_splits).
    `config={"decode": cfg}` launches with the triton.Config `cfg` instead of the shipped one.
    """
    forced = configs.forced_configs(config, ("decode",)).get("decode")
    check_tensors(q, k1_cache, k2_cache, v1_cache, v2_cache)
    B, NQ, HQ, D = q.shape
    C1, HKV = k1_cache.shape[1], k1_cache.shape[2]
    C2 = k2_cache.shape[1]
    group = HQ // HKV
    out = torch.empty((B, NQ, HQ, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, HQ, NQ), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    L1, L2 = prob.band1.left, prob.band2.left  # causal bands: right == 0
    bd = block_d(D)
    cfg = forced or configs.decode_config(arch_of(q.device), bd, q.dtype == torch.float32)
    block_m, block_j = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_J"]
    n_rb = triton.cdiv(NQ * group, block_m)
    # A row block spans at most (BLOCK_M - 1) // GROUP + 2 positions: its union j window.
    windows_len = L1 + min(NQ, (block_m - 1) // group + 2)
    splits = _num_splits(q, windows_len, block_j, B * HKV * n_rb, num_splits)
    split_j = triton.cdiv(triton.cdiv(windows_len, block_j), splits) * block_j
    m_part = torch.empty((B * HQ * NQ * splits,), dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty((B * HQ * NQ * splits, D), dtype=torch.float32, device=q.device)
    counts = {k: paths.buffer(k, q) for k in ("decode", "decode_combine")}
    with device_guard(q):
        _decode_split_kernel[(n_rb * splits, HKV, B)](
            q, k1_cache, k2_cache, v1_cache, v2_cache, prob.cache_seqlens, m_part, l_part, acc_part, counts["decode"],
            *q.stride(), *k1_cache.stride(), *k2_cache.stride(), *v1_cache.stride(), *v2_cache.stride(),
            NQ, HQ, group, D, C1, C2, L1, L2, split_j, splits,
            prob.scale,
            BLOCK_D=bd, DET=prob.logits == "determinant",
            INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
            COUNT_PATHS=counts["decode"] is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs,
        )  # fmt: skip
        _decode_combine_kernel[(NQ, HQ, B)](
            m_part, l_part, acc_part, out, lse, counts["decode_combine"],
            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
            NQ, HQ, D, splits,
            BLOCK_S=max(2, triton.next_power_of_2(splits)), BLOCK_D=bd,
            COUNT_PATHS=counts["decode_combine"] is not None,
        )  # fmt: skip
    paths.add("decode", bd, counts["decode"])
    paths.add("decode_combine", bd, counts["decode_combine"])
    return out, lse
