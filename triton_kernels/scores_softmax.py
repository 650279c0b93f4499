r"""Triton kernels of the unfused path: trilinear scores (fwd, bwd) and the windowed softmax (fwd, bwd).

Same interface as the reference (simplicial_attn/backends/scores_reference.py, which also holds the
layout and window table):

    scores_fwd(q, k1, k2, w1, w2, causal, scale, logits) -> scores [B, Hq, N, W1, W2] float32
    scores_bwd(dscores, q, k1, k2, w1, w2, causal, scale, logits) -> (dq, dk1, dk2)
    softmax_fwd(scores) -> probs            softmax_bwd(dprobs, probs) -> dscores

Scores: one program per (query, tile of BLOCK_A slots of the k1 window, head); it forms
q * k1[j] once (logits="determinant": the chunkwise cross product q x k1[j], from loads at
permuted channels, since det(q, k1, k2) = k2 . (q x k1)) and multiplies it against k2 tiles of
the k2 window. The logits are float32
IEEE dots whatever the input dtype (an analysis tool: TF32 / fp16 products would perturb the
weights it exists to show). The backward runs the same tiles and adds the key and query
gradients with float32 atomics (several queries' windows share every key).

Softmax: each window is one row of M = W1 * W2 contiguous elements. Rows up to
MAX_RESIDENT_ELEMENTS (8 K for the backward) live in registers: one read and one write of the row, with the mask
(-inf), the max subtraction and the normalisation fused; short rows are packed BLOCK_R to a
program so each program still moves ROW_TILE_ELEMENTS elements. Longer rows take the looped
kernels, which read the row twice (online max and sum, then the output).
"""

import torch
import triton
import triton.language as tl

from simplicial_attn.problem import compute_dtype, window_axis

from .operand import channels_at, chunk_shifts
from .runtime import check_device, device_guard

# Longest row one softmax program keeps in registers: 16 K floats over 16 warps is 32 per
# thread (~90 registers); the backward holds two arrays (probs and their gradient), so half.
MAX_RESIDENT_ELEMENTS = 16384
MAX_RESIDENT_ELEMENTS_BWD = 8192
# Elements per program for short rows (rows are packed until a tile holds this many).
ROW_TILE_ELEMENTS = 4096
# Chunk of a long row per loop iteration in the looped kernels (8 warps: 8 per thread).
LOOP_BLOCK = 2048


@triton.jit
def _scores_fwd_kernel(
    Q, K1, K2, S,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    N, HQ, GROUP, D, W1, W2, SLIDE1, LO1, SLIDE2, LO2, N_ATILES,
    scale,
    BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, DET: tl.constexpr,
):  # fmt: skip
    """S[b, h, i, a, c] for one query i, slots a0 .. a0 + BLOCK_A - 1, every c."""
    i = tl.program_id(0) // N_ATILES
    a = (tl.program_id(0) % N_ATILES) * BLOCK_A + tl.arange(0, BLOCK_A)
    b = (tl.program_id(1) // HQ).to(tl.int64)
    h = (tl.program_id(1) % HQ).to(tl.int64)
    g = h // GROUP
    i64 = i.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D

    j = SLIDE1 * i - LO1 + a
    j_ok = (a < W1) & (j >= 0) & (j < N)
    q_ptrs = Q + b * stride_qb + i64 * stride_qn + h * stride_qh + d * stride_qd
    k1_ptrs = K1 + b * stride_k1b + g * stride_k1h + j.to(tl.int64)[:, None] * stride_k1n + d[None, :] * stride_k1d
    jd_ok = j_ok[:, None] & d_ok[None, :]
    if DET:  # q x k1 per chunk (operand.chunk_shifts)
        sh1, sh2 = chunk_shifts(d, D)
        q1 = tl.load(q_ptrs + sh1 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
        q2 = tl.load(q_ptrs + sh2 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
        k1_1 = tl.load(k1_ptrs + (sh1 * stride_k1d)[None, :], mask=jd_ok, other=0.0).to(tl.float32)
        k1_2 = tl.load(k1_ptrs + (sh2 * stride_k1d)[None, :], mask=jd_ok, other=0.0).to(tl.float32)
        qk1 = q1[None, :] * k1_2 - q2[None, :] * k1_1
    else:
        q = tl.load(q_ptrs, mask=d_ok, other=0.0)
        qk1 = tl.load(k1_ptrs, mask=jd_ok, other=0.0).to(tl.float32) * q.to(tl.float32)[None, :]
    s_row = S + ((b * HQ + h) * N + i64) * W1 * W2 + a.to(tl.int64)[:, None] * W2
    for c0 in range(0, W2, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        k = SLIDE2 * i - LO2 + c
        k_ok = (c < W2) & (k >= 0) & (k < N)
        k2 = tl.load(
            K2 + b * stride_k2b + g * stride_k2h + k.to(tl.int64)[:, None] * stride_k2n + d[None, :] * stride_k2d,
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        s = tl.dot(qk1, tl.trans(k2.to(tl.float32)), input_precision="ieee") * scale
        s = tl.where(j_ok[:, None] & k_ok[None, :], s, float("-inf"))
        tl.store(s_row + c[None, :], s, mask=(a < W1)[:, None] & (c < W2)[None, :])


@triton.jit
def _scores_bwd_kernel(
    DS, Q, K1, K2, DQ, DK1, DK2,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_k1b, stride_k1n, stride_k1h, stride_k1d,
    stride_k2b, stride_k2n, stride_k2h, stride_k2d,
    N, HQ, HKV, GROUP, D, W1, W2, SLIDE1, LO1, SLIDE2, LO2, N_ATILES,
    scale,
    BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, DET: tl.constexpr,
):  # fmt: skip
    """The tile of _scores_fwd_kernel, backwards: adds its share of dq[i], dk1[j], dk2[k].

    DS is contiguous [B, HQ, N, W1, W2]; DQ [B, N, HQ, D] and DK1 / DK2 [B, N, HKV, D] are
    contiguous float32 accumulators. Slots outside the sequence are never loaded from DS.
    With r = sum_c dS[a, c] k2[k_c] and the forward's operand qk1 (q * k1, or q x k1):
    dk2 += dS^T @ qk1; trilinear dk1 += r * q, dq += sum_a r * k1; determinant dk1 += r x q,
    dq += sum_a k1 x r (CONTRACT §8), all times scale.
    """
    i = tl.program_id(0) // N_ATILES
    a = (tl.program_id(0) % N_ATILES) * BLOCK_A + tl.arange(0, BLOCK_A)
    b = (tl.program_id(1) // HQ).to(tl.int64)
    h = (tl.program_id(1) % HQ).to(tl.int64)
    g = h // GROUP
    i64 = i.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D

    j = SLIDE1 * i - LO1 + a
    j_ok = (a < W1) & (j >= 0) & (j < N)
    jd_ok = j_ok[:, None] & d_ok[None, :]
    q_ptrs = Q + b * stride_qb + i64 * stride_qn + h * stride_qh + d * stride_qd
    k1_ptrs = K1 + b * stride_k1b + g * stride_k1h + j.to(tl.int64)[:, None] * stride_k1n + d[None, :] * stride_k1d
    if DET:
        sh1, sh2 = chunk_shifts(d, D)
        q1 = tl.load(q_ptrs + sh1 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
        q2 = tl.load(q_ptrs + sh2 * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
        k1_1 = tl.load(k1_ptrs + (sh1 * stride_k1d)[None, :], mask=jd_ok, other=0.0).to(tl.float32)
        k1_2 = tl.load(k1_ptrs + (sh2 * stride_k1d)[None, :], mask=jd_ok, other=0.0).to(tl.float32)
        qk1 = q1[None, :] * k1_2 - q2[None, :] * k1_1
    else:
        q = tl.load(q_ptrs, mask=d_ok, other=0.0).to(tl.float32)
        k1 = tl.load(k1_ptrs, mask=jd_ok, other=0.0).to(tl.float32)
        qk1 = k1 * q[None, :]
    ds_row = DS + ((b * HQ + h) * N + i64) * W1 * W2 + a.to(tl.int64)[:, None] * W2
    r = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)  # sum_c dS[a, c] k2[k_c]
    for c0 in range(0, W2, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        k = SLIDE2 * i - LO2 + c
        k_ok = (c < W2) & (k >= 0) & (k < N)
        kd_ok = k_ok[:, None] & d_ok[None, :]
        k64 = k.to(tl.int64)[:, None]
        k2 = tl.load(
            K2 + b * stride_k2b + g * stride_k2h + k64 * stride_k2n + d[None, :] * stride_k2d, mask=kd_ok, other=0.0
        ).to(tl.float32)
        ds = tl.load(ds_row + c[None, :], mask=j_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        r = tl.dot(ds, k2, r, input_precision="ieee")
        u = tl.dot(tl.trans(ds), qk1, input_precision="ieee")  # sum_a dS[a, c] qk1[a]
        tl.atomic_add(DK2 + ((b * N + k64) * HKV + g) * D + d[None, :], u * scale, mask=kd_ok)
    if DET:
        r1, r2 = channels_at(r, d, sh1), channels_at(r, d, sh2)
        dk1 = r1 * q2[None, :] - r2 * q1[None, :]
        dq = tl.sum(k1_1 * r2 - k1_2 * r1, 0)
    else:
        dk1 = r * q[None, :]
        dq = tl.sum(r * k1, 0)
    j64 = j.to(tl.int64)[:, None]
    tl.atomic_add(DK1 + ((b * N + j64) * HKV + g) * D + d[None, :], dk1 * scale, mask=jd_ok)
    tl.atomic_add(DQ + ((b * N + i64) * HQ + h) * D + d, dq * scale, mask=d_ok)


@triton.jit
def _softmax_fwd_kernel(X, Y, R, M, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr):
    """BLOCK_R whole rows in registers: one read, one write."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_M)
    mask = (rows < R)[:, None] & (cols < M)[None, :]
    offs = rows.to(tl.int64)[:, None] * M + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=float("-inf")).to(tl.float32)
    m = tl.max(x, 1)
    # An all -inf row subtracts 0 (exp gives 0, not NaN); its exps are all 0, so dividing
    # them by 1 instead of their sum 0 gives weights 0.
    e = tl.exp(x - tl.where(m == float("-inf"), 0.0, m)[:, None])
    total = tl.sum(e, 1)
    inv = 1.0 / tl.where(total == 0.0, 1.0, total)
    tl.store(Y + offs, (e * inv[:, None]).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_fwd_looped_kernel(X, Y, M, BLOCK_M: tl.constexpr):
    """One long row: per-lane online max and sum over the row, then a second read to write."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_M)
    m_lane = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_lane = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_M):
        x = tl.load(X + row * M + start + cols, mask=start + cols < M, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_lane = l_lane * tl.exp(m_lane - m_sub) + tl.exp(x - m_sub)
        m_lane = m_new
    m = tl.max(m_lane, 0)
    m_sub = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(l_lane * tl.exp(m_lane - m_sub), 0)
    inv = 1.0 / tl.where(total == 0.0, 1.0, total)
    for start in range(0, M, BLOCK_M):
        mask = start + cols < M
        x = tl.load(X + row * M + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        tl.store(Y + row * M + start + cols, (tl.exp(x - m_sub) * inv).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(DP, P, DS, R, M, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr):
    """dS = P * (dP - sum(P * dP)) for BLOCK_R whole rows in registers."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_M)
    mask = (rows < R)[:, None] & (cols < M)[None, :]
    offs = rows.to(tl.int64)[:, None] * M + cols[None, :]
    p = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
    dp = tl.load(DP + offs, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(p * dp, 1)
    tl.store(DS + offs, (p * (dp - dot[:, None])).to(DS.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_looped_kernel(DP, P, DS, M, BLOCK_M: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_M):
        mask = start + cols < M
        p = tl.load(P + row * M + start + cols, mask=mask, other=0.0).to(tl.float32)
        dp = tl.load(DP + row * M + start + cols, mask=mask, other=0.0).to(tl.float32)
        acc += p * dp
    dot = tl.sum(acc, 0)
    for start in range(0, M, BLOCK_M):
        mask = start + cols < M
        p = tl.load(P + row * M + start + cols, mask=mask, other=0.0).to(tl.float32)
        dp = tl.load(DP + row * M + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DS + row * M + start + cols, (p * (dp - dot)).to(DS.dtype.element_ty), mask=mask)


# Register tiles of the scores kernels per padded head dim: (BLOCK_A, BLOCK_C, num_warps) for
# the forward and the backward, the largest without spills on sm_80, sm_86 and sm_90 (ptxas;
# bf16 and fp32 inputs alike, the dots are float32 FMAs). The D = 256 backward spills with 16
# warps on sm_90 and with 8 on sm_8x, so sm_90 takes 8 (_score_tiles).
_SCORE_TILES = {64: ((32, 32, 4), (16, 32, 4)), 128: ((16, 32, 4), (16, 16, 8)), 256: ((16, 32, 8), (16, 16, 16))}


def _score_tiles(q, w1, w2, causal, backward):
    """Window axes, number of k1-slot tiles, launch grid and kernel meta of the scores kernels."""
    B, N, HQ, D = q.shape
    ax1, ax2 = window_axis(w1, N, causal), window_axis(w2, N, causal)
    block_d = max(16, triton.next_power_of_2(D))
    block_a, block_c, num_warps = _SCORE_TILES[max(64, block_d)][backward]
    if backward and block_d == 256 and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9:
        num_warps = 8
    block_a = min(block_a, max(16, triton.next_power_of_2(ax1.size)))
    block_c = min(block_c, max(16, triton.next_power_of_2(ax2.size)))
    n_atiles = triton.cdiv(ax1.size, block_a)
    meta = dict(BLOCK_A=block_a, BLOCK_C=block_c, BLOCK_D=block_d, num_warps=num_warps)
    return ax1, ax2, n_atiles, (N * n_atiles, B * HQ), meta


def scores_fwd(q, k1, k2, w1, w2, causal, scale, logits="trilinear"):
    """Scores [B, Hq, N, W1, W2] float32 (see the module doc); inputs of any strides."""
    check_device(q, k1, k2)
    B, N, HQ, D = q.shape
    ax1, ax2, n_atiles, grid, meta = _score_tiles(q, w1, w2, causal, backward=False)
    out = torch.empty((B, HQ, N, ax1.size, ax2.size), dtype=compute_dtype(q.dtype), device=q.device)
    with device_guard(q):
        _scores_fwd_kernel[grid](
            q, k1, k2, out,
            *q.stride(), *k1.stride(), *k2.stride(),
            N, HQ, HQ // k1.shape[2], D, ax1.size, ax2.size, ax1.slide, ax1.lo, ax2.slide, ax2.lo, n_atiles,
            scale,
            DET=logits == "determinant", **meta,
        )  # fmt: skip
    return out


def scores_bwd(dscores, q, k1, k2, w1, w2, causal, scale, logits="trilinear"):
    """(dq, dk1, dk2) of sum(dscores * scores), typed like the inputs; masked slots ignored."""
    check_device(q, k1, k2)
    B, N, HQ, D = q.shape
    HKV = k1.shape[2]
    ax1, ax2, n_atiles, grid, meta = _score_tiles(q, w1, w2, causal, backward=True)
    dscores = dscores.to(torch.float32).contiguous()
    dq = torch.zeros((B, N, HQ, D), dtype=torch.float32, device=q.device)
    dk1, dk2 = (torch.zeros((B, N, HKV, D), dtype=torch.float32, device=q.device) for _ in range(2))
    with device_guard(q):
        _scores_bwd_kernel[grid](
            dscores, q, k1, k2, dq, dk1, dk2,
            *q.stride(), *k1.stride(), *k2.stride(),
            N, HQ, HKV, HQ // HKV, D, ax1.size, ax2.size, ax1.slide, ax1.lo, ax2.slide, ax2.lo, n_atiles,
            scale,
            DET=logits == "determinant", **meta,
        )  # fmt: skip
    return dq.to(q.dtype), dk1.to(k1.dtype), dk2.to(k2.dtype)


def _row_launch(x, max_resident):
    """(rows R, row length M, grid, kernel meta, looped?) for the softmax kernels."""
    M = x.shape[-1] * x.shape[-2]
    R = x.numel() // M
    block_m = triton.next_power_of_2(M)
    if block_m > max_resident:
        return R, M, (R,), dict(BLOCK_M=LOOP_BLOCK, num_warps=8), True
    block_r = max(1, min(triton.next_power_of_2(R), ROW_TILE_ELEMENTS // block_m))
    num_warps = min(16, max(4, block_r * block_m // 1024))
    return R, M, (triton.cdiv(R, block_r),), dict(BLOCK_R=block_r, BLOCK_M=block_m, num_warps=num_warps), False


def softmax_fwd(scores, *, max_resident=MAX_RESIDENT_ELEMENTS):
    """Softmax over the last two dims jointly (-inf -> 0; an all -inf window -> zeros).
    `max_resident` is the longest row kept in registers (tests lower it to reach the looped kernel)."""
    check_device(scores)
    x = scores.contiguous()
    y = torch.empty_like(x)
    R, M, grid, meta, looped = _row_launch(x, max_resident)
    with device_guard(x):
        if looped:
            _softmax_fwd_looped_kernel[grid](x, y, M, **meta)
        else:
            _softmax_fwd_kernel[grid](x, y, R, M, **meta)
    return y


def softmax_bwd(dprobs, probs, *, max_resident=MAX_RESIDENT_ELEMENTS_BWD):
    """dscores = probs * (dprobs - sum(probs * dprobs)) over each window."""
    check_device(probs)
    p = probs.contiguous()
    dp = dprobs.to(p.dtype).contiguous()
    ds = torch.empty_like(p)
    R, M, grid, meta, looped = _row_launch(p, max_resident)
    with device_guard(p):
        if looped:
            _softmax_bwd_looped_kernel[grid](dp, p, ds, M, **meta)
        else:
            _softmax_bwd_kernel[grid](dp, p, ds, R, M, **meta)
    return ds
