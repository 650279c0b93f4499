r"""Forward kernel: out and lse of 2-simplicial sliding-window attention.

One program owns BLOCK_M query rows of one kv head group. A row is a (position, query head)
pair: BLOCK_P = BLOCK_M // BLOCK_H consecutive positions times BLOCK_H heads that share the
kv head g.

    sequence tiling (BLOCK_H = 1)           head packing (BLOCK_H = 64, BLOCK_P = 1)
    rows = positions p0 .. p0+63 of head h  rows = heads g*R .. g*R+63 at position p0

Head packing is for GQA with many query heads per kv head (Hq / Hkv >= 16): every row then
has the same windows, so no tensor-core work is spent on pairs outside them.

The loop order avoids building a q * k1_j operand per j. With the offset u = i - k (k is the
k2/v2 position), the k2 row of every query row is a shifted tile, so per u

    a     = q * k2[i - u]                [BLOCK_M, D]   built once per u
    s     = a @ k1[j-block]^T            [BLOCK_M, BLOCK_J] logits (scaled below)
    y    += softmax-weights @ v1[j-block] [BLOCK_M, D]
    acc  += y * v2[i - u]                 once per u

and the inner loop over j-blocks is two plain tensor-core products on loaded tiles. With
logits="determinant" the operand is the chunkwise cross product a = k2[i - u] x q, formed from
loads at permuted channels (_common.chunk_shifts): the same product depth, nothing else changes.

An online softmax over the joint (j, k) window runs in float32 in NATURAL units (issue 14):
the logits z = scale * s, the running max m and lse are natural logs, and every exponent is
exp2((z - m) * log2(e)), the subtraction first, so it stays exact near the max at any logit
magnitude. The epilogue stores lse = fl(m + ln l) and its rounding residual
lse_lo = fl((m - lse) + ln l) (m - lse is exact; 0 where lse is not finite), float32
[B, Hq, N], for the backward (numerics rule). Nothing else is saved.

Packed sequences (cu_seqlens, VARLEN): grid axis 2 runs over the sequences, a tile never
crosses one (sequence_span: every position, mask and window is relative to the sequence's
first row), and tiles past a sequence's end exit at once.
"""

import torch
import triton
import triton.language as tl

from . import configs, paths
from ._common import (
    P_HEAD_PACKED,
    P_HEAD_TAIL,
    P_J_PAST_N,
    P_J_REPEAT,
    P_J_TAIL,
    P_K_OUTSIDE,
    P_U_REPEAT,
    arch_of,
    block_d,
    channels_at,
    check_tensors,
    chunk_shifts,
    count_common_paths,
    device_guard,
    exp_shifted,
    head_block,
    input_precision,
    int32_tiles,
    is_interpreting,
    j_window_mask,
    layout,
    mma,
    query_tile,
    query_tile_loops,
    sequence_span,
)


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
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COUNT_PATHS: tl.constexpr,
):  # fmt: skip
    # Addresses are a 64-bit scalar base (batch, head, first row of the tile) plus 32-bit
    # offsets inside the tile; the launcher guarantees those fit in int32. Positions, masks
    # and windows are relative to the sequence: [0, n).
    start, n = sequence_span(CU_SEQLENS, N, VARLEN)
    p0, g, b, h0, rp, rh, pos, row_ok = query_tile(n, GROUP, BLOCK_M, BLOCK_H)
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        count_common_paths(COUNTS, p0, n, D, GROUP, R1, R2, BLOCK_M // BLOCK_H, BLOCK_D, VARLEN, DET)
        if BLOCK_H > 1:
            tl.atomic_add(COUNTS + P_HEAD_PACKED, tl.where(p0 < n, 1, 0))
        tl.atomic_add(COUNTS + P_HEAD_TAIL, tl.sum(tl.where((pos < n) & ~row_ok, 1, 0)))
    if VARLEN:  # a batched grid has no tile past its sequence
        if p0 >= n:
            return
    dt = K1.dtype.element_ty
    r0 = p0.to(tl.int64) + start  # the tile's first row
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)

    q_ptrs = (
        Q
        + b * stride_qb
        + h0 * stride_qh
        + r0 * stride_qn
        + (rp[:, None] * stride_qn + rh[:, None] * stride_qh + d[None, :] * stride_qd)
    )
    k1_offs = jr[:, None] * stride_k1n + d[None, :] * stride_k1d
    v1_offs = jr[:, None] * stride_v1n + d[None, :] * stride_v1d
    k2_offs = rp[:, None] * stride_k2n + d[None, :] * stride_k2d
    v2_offs = rp[:, None] * stride_v2n + d[None, :] * stride_v2d
    k1_base = K1 + b * stride_k1b + g.to(tl.int64) * stride_k1h + start * stride_k1n
    v1_base = V1 + b * stride_v1b + g.to(tl.int64) * stride_v1h + start * stride_v1n
    k2_base = K2 + b * stride_k2b + g.to(tl.int64) * stride_k2h
    v2_base = V2 + b * stride_v2b + g.to(tl.int64) * stride_v2h
    if DET:
        sh1, sh2 = chunk_shifts(d, D)

    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, n, L1, R1, L2, R2, BLOCK_M // BLOCK_H)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for u in range(u_lo, u_hi + 1):
        kpos = pos - u
        k_ok = row_ok & (kpos >= 0) & (kpos < n)
        kd_mask = k_ok[:, None] & d_ok[None, :]
        if COUNT_PATHS:
            tl.atomic_add(COUNTS + P_U_REPEAT, tl.where(u > u_lo, 1, 0))
            tl.atomic_add(COUNTS + P_K_OUTSIDE, tl.sum(tl.where(row_ok & ~k_ok, 1, 0)))
        k2u = tl.load(k2_base + (r0 - u) * stride_k2n + k2_offs, mask=kd_mask, other=0.0)
        # q is re-read (from cache) per u rather than held: registers go to the accumulators.
        q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
        if DET:  # a = k2 x q per chunk, channels permuted in registers
            k2_1, k2_2 = channels_at(k2u, d, sh1).to(tl.float32), channels_at(k2u, d, sh2).to(tl.float32)
            a = (k2_1 * channels_at(q, d, sh2).to(tl.float32) - k2_2 * channels_at(q, d, sh1).to(tl.float32)).to(dt)
        else:
            a = (q.to(tl.float32) * k2u.to(tl.float32)).to(dt)
        m_start = m_i
        y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            js = j0 + jr
            j_ok = js <= j_hi
            jd_mask = j_ok[:, None] & d_ok[None, :]
            if COUNT_PATHS:
                tl.atomic_add(COUNTS + P_J_REPEAT, tl.where(j0 > j_lo, 1, 0))
                tl.atomic_add(COUNTS + P_J_TAIL, tl.where(j0 + BLOCK_J - 1 > j_hi, 1, 0))
                tl.atomic_add(COUNTS + P_J_PAST_N, tl.where(j0 + BLOCK_J > n, 1, 0))
            j_start = tl.cast(j0, tl.int64)
            k1b = tl.load(k1_base + j_start * stride_k1n + k1_offs, mask=jd_mask, other=0.0)
            v1b = tl.load(v1_base + j_start * stride_v1n + v1_offs, mask=jd_mask, other=0.0)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            s = s * scale
            in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
            s = tl.where(in_win, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with nothing in the window so far keeps m = -inf; subtracting 0 instead
            # keeps exp2 at 0 there rather than NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = exp_shifted(m_i, m_sub)
            p = exp_shifted(s, m_sub[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            y = mma(p.to(dt), v1b, y * alpha[:, None], INPUT_PRECISION, UPCAST)
            m_i = m_new
        # y is in the scale of the current max; acc still in that of m_start.
        beta = exp_shifted(m_start, tl.where(m_i == float("-inf"), 0.0, m_i))
        v2u = tl.load(v2_base + (r0 - u) * stride_v2n + v2_offs, mask=kd_mask, other=0.0)
        acc = acc * beta[:, None] + y * v2u.to(tl.float32)

    # Rows past the sequence or the group never see a pair (l = 0) and are not stored; 1
    # keeps them finite. A NaN l (a NaN logit: tl.max skips NaN, so m stays finite) must stay
    # NaN: it makes lse NaN, which the backward needs so that dv1 / dv2 turn NaN as the
    # reference's do (they read P only, not Delta).
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    o_offs = rp[:, None] * stride_on + rh[:, None] * stride_oh + d[None, :]
    o_base = OUT + b * stride_ob + h0 * stride_oh + r0 * stride_on
    tl.store(o_base + o_offs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    ln_l = tl.log(l_i)
    lse = m_i + ln_l
    # Where lse is not finite it carries the NaN / inf alone (lse_lo = 0); the inner selects
    # keep rows that saw no pair (m = -inf, never stored) from computing -inf - -inf.
    finite = tl.abs(lse) < float("inf")
    lse_lo = tl.where(finite, (tl.where(finite, m_i, 0.0) - tl.where(finite, lse, 0.0)) + ln_l, 0.0)
    row_offs = b * stride_lb + h0 * stride_lh + r0 + (rh * stride_lh + rp)
    tl.store(LSE + row_offs, lse, mask=row_ok)
    tl.store(LSE_LO + row_offs, lse_lo, mask=row_ok)


def fwd(q, k1, k2, v1, v2, prob, *, head_packing=None, allow_tf32=False, config=None):
    """(out, lse, lse_lo): out like q (contiguous), lse and lse_lo [B, Hq, N] float32 (natural log).

    Batched: q [B, N, Hq, D]; k1, k2, v1, v2 [B, N, Hkv, D], any strides. Packed
    (prob.cu_seqlens, CONTRACT §6): B = 1, N = T rows holding the sequences. `prob` is the
    call's Problem (simplicial_attn/problem.py: window bands, scale, logits, layout).
    `head_packing` forces the GQA head-packed tiling on (True) or off (False); None picks it by
    shape. `allow_tf32` lets float32 inputs use TF32 tensor cores (so does
    SIMPLICIAL_ATTN_ALLOW_TF32=1). `config={"fwd": cfg}` launches with the one
    triton.Config `cfg` instead of autotuning (tests, configs.py).
    """
    forced = configs.forced_configs(config, ("fwd",)).get("fwd")
    check_tensors(q, k1, k2, v1, v2)
    seqs = layout(q, prob)
    q, k1, k2, v1, v2 = (int32_tiles(t) for t in (q, k1, k2, v1, v2))
    B, N, HQ, D = q.shape
    HKV = k1.shape[2]
    group = HQ // HKV
    out = torch.empty((B, N, HQ, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, HQ, N), dtype=torch.float32, device=q.device)
    lse_lo = torch.empty_like(lse)
    if out.numel() == 0:
        return out, lse, lse_lo
    (L1, R1), (L2, R2) = prob.band1, prob.band2
    bd = block_d(D)
    arch = arch_of(q.device)
    fp32 = q.dtype == torch.float32
    det = prob.logits == "determinant"
    block_h = head_block(group, head_packing, "fwd", arch, bd, fp32, forced, det)
    kernel = configs.autotuned("fwd", _two_simplicial_fwd_kernel, arch, bd, fp32, block_h >= 64, forced, det)

    def grid(meta):
        return (triton.cdiv(seqs.max_len, meta["BLOCK_M"] // block_h), HKV * triton.cdiv(group, block_h), seqs.count)

    counts = paths.buffer("fwd", q)
    with device_guard(q):
        kernel[grid](
            q, k1, k2, v1, v2, out, lse, lse_lo, seqs.cu_seqlens, counts,
            *seqs.strides(q), *seqs.strides(k1), *seqs.strides(k2), *seqs.strides(v1), *seqs.strides(v2),
            *seqs.strides(out)[:3],
            *seqs.strides(lse)[:2],
            seqs.n, group, D, L1, R1, L2, R2,
            prob.scale,
            BLOCK_H=block_h, BLOCK_D=bd, VARLEN=seqs.packed, DET=det,
            INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
            COUNT_PATHS=counts is not None,
        )  # fmt: skip
    paths.add("fwd", bd, counts)
    return out, lse, lse_lo
