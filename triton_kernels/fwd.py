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

and the inner loop over j-blocks is two plain tensor-core products on loaded tiles. An
online softmax over the joint (j, k) window runs in float32 in base 2 (log2(e) is folded
into the scale); `lse` is stored in NATURAL log (ln), float32, [B, Hq, N]: the backward turns
it back into base 2 by multiplying with log2(e). Nothing else is saved.
"""

import torch
import triton
import triton.language as tl

from . import configs
from ._common import (
    LOG2E,
    arch_of,
    block_d,
    check_tensors,
    device_guard,
    head_block,
    input_precision,
    int32_tiles,
    is_interpreting,
    j_window_mask,
    mma,
    query_tile,
    query_tile_loops,
    require_implemented,
    window_bounds,
)


@triton.jit
def _two_simplicial_fwd_kernel(
    Q, K1, K2, V1, V2, OUT, LSE,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    stride_v1b, stride_v1n, stride_v1h, stride_v1d,
    stride_v2b, stride_v2n, stride_v2h, stride_v2d,
    stride_ob, stride_on, stride_oh,
    stride_lb, stride_lh,
    N, GROUP, D, L1, R1, L2, R2,
    scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    # Addresses are a 64-bit scalar base (batch, head, first position of the tile) plus
    # 32-bit offsets inside the tile; the launcher guarantees those fit in int32.
    p0, g, b, h0, rp, rh, pos, row_ok = query_tile(N, GROUP, BLOCK_M, BLOCK_H)
    dt = K1.dtype.element_ty
    p0_64 = p0.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    jr = tl.arange(0, BLOCK_J)

    q_ptrs = (
        Q
        + b * stride_qb
        + h0 * stride_qh
        + p0_64 * stride_qn
        + (rp[:, None] * stride_qn + rh[:, None] * stride_qh + d[None, :] * stride_qd)
    )
    k1_offs = jr[:, None] * stride_k1n + d[None, :] * stride_k1d
    v1_offs = jr[:, None] * stride_v1n + d[None, :] * stride_v1d
    k2_offs = rp[:, None] * stride_k2n + d[None, :] * stride_k2d
    v2_offs = rp[:, None] * stride_v2n + d[None, :] * stride_v2d
    k1_base = K1 + b * stride_k1b + g.to(tl.int64) * stride_k1h
    v1_base = V1 + b * stride_v1b + g.to(tl.int64) * stride_v1h
    k2_base = K2 + b * stride_k2b + g.to(tl.int64) * stride_k2h
    v2_base = V2 + b * stride_v2b + g.to(tl.int64) * stride_v2h

    u_lo, u_hi, j_lo, j_hi = query_tile_loops(p0, N, L1, R1, L2, R2, BLOCK_M // BLOCK_H)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for u in range(u_lo, u_hi + 1):
        kpos = pos - u
        k_ok = row_ok & (kpos >= 0) & (kpos < N)
        kd_mask = k_ok[:, None] & d_ok[None, :]
        k_start = p0_64 - u
        k2u = tl.load(k2_base + k_start * stride_k2n + k2_offs, mask=kd_mask, other=0.0)
        # q is re-read (from cache) per u rather than held: registers go to the accumulators.
        q = tl.load(q_ptrs, mask=kd_mask, other=0.0)
        a = (q.to(tl.float32) * k2u.to(tl.float32)).to(dt)
        m_start = m_i
        y = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j0 in range(j_lo, j_hi + 1, BLOCK_J):
            js = j0 + jr
            j_ok = js <= j_hi
            jd_mask = j_ok[:, None] & d_ok[None, :]
            j_start = tl.cast(j0, tl.int64)
            k1b = tl.load(k1_base + j_start * stride_k1n + k1_offs, mask=jd_mask, other=0.0)
            v1b = tl.load(v1_base + j_start * stride_v1n + v1_offs, mask=jd_mask, other=0.0)
            s = mma(a, tl.trans(k1b), tl.zeros([BLOCK_M, BLOCK_J], tl.float32), INPUT_PRECISION, UPCAST)
            s = s * scale_log2
            in_win = j_window_mask(k_ok, pos, j_ok, js, L1, R1)
            s = tl.where(in_win, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with nothing in the window so far keeps m = -inf; subtracting 0 instead
            # keeps exp2 at 0 there rather than NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_sub)
            p = tl.exp2(s - m_sub[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            y = mma(p.to(dt), v1b, y * alpha[:, None], INPUT_PRECISION, UPCAST)
            m_i = m_new
        # y is in the scale of the current max; acc still in that of m_start.
        beta = tl.exp2(m_start - tl.where(m_i == float("-inf"), 0.0, m_i))
        v2u = tl.load(v2_base + k_start * stride_v2n + v2_offs, mask=kd_mask, other=0.0)
        acc = acc * beta[:, None] + y * v2u.to(tl.float32)

    # Rows past N or past the group never see a pair (l = 0) and are not stored; 1 keeps
    # them finite. A NaN l (a NaN logit: tl.max skips NaN, so m stays finite) must stay NaN:
    # it makes lse NaN, which the backward needs so that dv1 / dv2 turn NaN as the
    # reference's do (they read P only, not Delta).
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    o_offs = rp[:, None] * stride_on + rh[:, None] * stride_oh + d[None, :]
    o_base = OUT + b * stride_ob + h0 * stride_oh + p0_64 * stride_on
    tl.store(o_base + o_offs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    # Natural log: ln(sum) = (m + log2(l)) * ln(2).
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + b * stride_lb + h0 * stride_lh + p0_64 + (rh * stride_lh + rp), lse, mask=row_ok)


def fwd(q, k1, k2, v1, v2, prob, *, head_packing=None, allow_tf32=False):
    """out [B, N, Hq, D] (q's dtype, contiguous), lse and lse_lo [B, Hq, N] (float32, natural log).

    q is [B, N, Hq, D]; k1, k2, v1, v2 are [B, N, Hkv, D], any strides. `prob` is the call's
    Problem (simplicial_attn/problem.py: integer windows already normalised, causal, scale,
    logits, layout). `head_packing` forces the GQA head-packed tiling on (True) or off (False);
    None picks it by shape. `allow_tf32` lets float32 inputs use TF32 tensor cores (so does
    SIMPLICIAL_ATTN_ALLOW_TF32=1).
    """
    require_implemented(prob)
    w1, w2, causal, scale = prob.w1, prob.w2, prob.causal, prob.scale
    check_tensors(q, k1, k2, v1, v2)
    q, k1, k2, v1, v2 = (int32_tiles(t) for t in (q, k1, k2, v1, v2))
    B, N, HQ, D = q.shape
    HKV = k1.shape[2]
    group = HQ // HKV
    out = torch.empty((B, N, HQ, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, HQ, N), dtype=torch.float32, device=q.device)
    L1, R1 = window_bounds(w1, causal)
    L2, R2 = window_bounds(w2, causal)
    bd = block_d(D)
    arch = arch_of(q.device)
    fp32 = q.dtype == torch.float32
    block_h = head_block(group, head_packing, "fwd", arch, bd, fp32)
    kernel = configs.autotuned("fwd", _two_simplicial_fwd_kernel, arch, bd, fp32, packed=block_h >= 64)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"] // block_h), HKV * triton.cdiv(group, block_h), B)

    with device_guard(q):
        kernel[grid](
            q, k1, k2, v1, v2, out, lse,
            *q.stride(), *k1.stride(), *k2.stride(), *v1.stride(), *v2.stride(),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            N, group, D, L1, R1, L2, R2,
            scale * LOG2E,
            BLOCK_H=block_h, BLOCK_D=bd,
            INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
        )  # fmt: skip
    return out, lse, torch.zeros_like(lse)
