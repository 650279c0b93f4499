"""Backward launcher: the Delta preprocess kernel, then three atomic-free gradient kernels.

    Delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d]        (_delta_kernel, here)
    dq                  one program per forward tile                   (bwd_dq.py)
    dk1, dv1            one program per tile of k1/v1 positions        (bwd_dkv1.py)
    dk2, dv2            one program per tile of k2/v2 positions        (bwd_dkv2.py)

Every gradient element is written by exactly one program, with a fixed summation order, so
the backward is deterministic. `lse` must be the forward's: natural log, float32, [B, Hq, N].
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
    require_implemented,
    window_bounds,
)
from .bwd_dkv1 import _two_simplicial_bwd_dkv1_kernel
from .bwd_dkv2 import _two_simplicial_bwd_dkv2_kernel
from .bwd_dq import _two_simplicial_bwd_dq_kernel

DELTA_BLOCK_N = 32


@triton.jit
def _delta_kernel(
    OUT, DOUT, DELTA,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_lb, stride_lh,
    N, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Delta = rowsum(dout * out) in float32: one read of each row, one write per row."""
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


def bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, *, head_packing=None, allow_tf32=False):
    """(dq, dk1, dk2, dv1, dv2), each shaped and typed like its input, contiguous.

    Shapes as in `fwd`; `out`, `lse` and `lse_lo` are the forward's (lse natural log, float32).
    With GQA a kv gradient sums over the query heads sharing the kv head. `prob`,
    `head_packing` and `allow_tf32` as in `fwd`.
    """
    require_implemented(prob)
    w1, w2, causal, scale = prob.w1, prob.w2, prob.causal, prob.scale
    check_tensors(q, k1, k2, v1, v2, dout, out)
    dout, q, k1, k2, v1, v2, out = (int32_tiles(t) for t in (dout, q, k1, k2, v1, v2, out))
    B, N, HQ, D = q.shape
    HKV = k1.shape[2]
    group = HQ // HKV
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    dq = torch.empty((B, N, HQ, D), dtype=q.dtype, device=q.device)
    dk1, dk2, dv1, dv2 = (torch.empty((B, N, HKV, D), dtype=k1.dtype, device=q.device) for _ in range(4))
    L1, R1 = window_bounds(w1, causal)
    L2, R2 = window_bounds(w2, causal)
    bd = block_d(D)
    arch = arch_of(q.device)
    fp32 = q.dtype == torch.float32
    precision = input_precision(q.dtype, allow_tf32)
    upcast = is_interpreting()
    common = (
        *q.stride(), *k1.stride(), *k2.stride(), *v1.stride(), *v2.stride(), *dout.stride(),
        lse.stride(0), lse.stride(1),
    )  # fmt: skip
    sizes = (N, group, D, L1, R1, L2, R2, scale, scale * LOG2E)
    flags = dict(BLOCK_D=bd, INPUT_PRECISION=precision, UPCAST=upcast)

    with device_guard(q):
        _delta_kernel[(triton.cdiv(N, DELTA_BLOCK_N), HQ, B)](
            out, dout, delta, *out.stride(), *dout.stride(), delta.stride(0), delta.stride(1), N, D,
            BLOCK_N=DELTA_BLOCK_N, BLOCK_D=bd,
        )  # fmt: skip

        block_h = head_block(group, head_packing, "bwd_dq", arch, bd, fp32)
        dq_kernel = configs.autotuned("bwd_dq", _two_simplicial_bwd_dq_kernel, arch, bd, fp32, packed=block_h >= 64)
        dq_kernel[lambda m: (triton.cdiv(N, m["BLOCK_M"] // block_h), HKV * triton.cdiv(group, block_h), B)](
            q, k1, k2, v1, v2, dout, lse, delta, dq, *common, dq.stride(0), dq.stride(1), dq.stride(2), *sizes,
            BLOCK_H=block_h, **flags,
        )  # fmt: skip

        dkv1_kernel = configs.autotuned("bwd_dkv1", _two_simplicial_bwd_dkv1_kernel, arch, bd, fp32)
        dkv1_kernel[lambda m: (triton.cdiv(N, m["BLOCK_J"]), HKV, B)](
            q, k1, k2, v1, v2, dout, lse, delta, dk1, dv1, *common, dk1.stride(0), dk1.stride(1), dk1.stride(2),
            *sizes, **flags,
        )  # fmt: skip

        dkv2_kernel = configs.autotuned("bwd_dkv2", _two_simplicial_bwd_dkv2_kernel, arch, bd, fp32)
        dkv2_kernel[lambda m: (triton.cdiv(N, m["BLOCK_K"]), HKV, B)](
            q, k1, k2, v1, v2, dout, lse, delta, dk2, dv2, *common, dk2.stride(0), dk2.stride(1), dk2.stride(2),
            *sizes, **flags,
        )  # fmt: skip
    return dq, dk1, dk2, dv1, dv2
