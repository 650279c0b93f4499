"""Backward launcher: the Delta preprocess kernel, then three atomic-free gradient kernels.

    Delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d]        (_delta_kernel, here)
    dq                  one program per forward tile                   (bwd_dq.py)
    dk1, dv1            one program per tile of k1/v1 positions        (bwd_dkv1.py)
    dk2, dv2            one program per tile of k2/v2 positions        (bwd_dkv2.py)

Every gradient element is written by exactly one program, with a fixed summation order, so
the backward is deterministic. `lse` and `lse_lo` must be the forward's: natural log, float32,
[B, Hq, N]; every kernel recomputes P as exp(min((z - lse) - lse_lo, 0)) (_common.recomputed_p).
"""

import torch
import triton
import triton.language as tl

from . import configs, paths
from ._common import (
    arch_of,
    block_d,
    check_tensors,
    device_guard,
    head_block,
    input_precision,
    int32_tiles,
    is_interpreting,
    layout,
)
from .bwd_dkv1 import _two_simplicial_bwd_dkv1_kernel
from .bwd_dkv2 import _two_simplicial_bwd_dkv2_kernel
from .bwd_dq import _two_simplicial_bwd_dq_kernel

DELTA_BLOCK_N = 32
# last_tile: rows past N (masked, zero-filled); d_tail: channels past D (see paths.py).
P_LAST_TILE, P_D_TAIL = paths.slots(("bwd_delta",), "last_tile", "d_tail", common=False)


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
    if COUNT_PATHS:  # paths.py: interpreter only, never compiled
        tl.atomic_add(COUNTS + P_LAST_TILE, tl.where((tl.program_id(0) + 1) * BLOCK_N > N, 1, 0))
        tl.atomic_add(COUNTS + P_D_TAIL, tl.where(D < BLOCK_D, 1, 0))
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


def bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, *, head_packing=None, allow_tf32=False, config=None):
    """(dq, dk1, dk2, dv1, dv2), each shaped and typed like its input, contiguous.

    Shapes and `prob` as in `fwd`; `out`, `lse` and `lse_lo` are the forward's. With GQA a kv
    gradient sums over the query heads sharing the kv head. `head_packing`, `allow_tf32` and
    `config` (keys "bwd_dq", "bwd_dkv1", "bwd_dkv2") as in `fwd`.
    """
    forced = configs.forced_configs(config, ("bwd_dq", "bwd_dkv1", "bwd_dkv2"))
    check_tensors(q, k1, k2, v1, v2, dout, out)
    seqs = layout(q, prob)
    dout, q, k1, k2, v1, v2, out = (int32_tiles(t) for t in (dout, q, k1, k2, v1, v2, out))
    B, N, HQ, D = q.shape
    HKV = k1.shape[2]
    group = HQ // HKV
    lse, lse_lo = lse.contiguous(), lse_lo.contiguous()
    delta = torch.empty_like(lse)
    dq = torch.empty((B, N, HQ, D), dtype=q.dtype, device=q.device)
    dk1, dk2, dv1, dv2 = (torch.empty((B, N, HKV, D), dtype=k1.dtype, device=q.device) for _ in range(4))
    if dq.numel() == 0 or dk1.numel() == 0:
        return dq.zero_(), dk1.zero_(), dk2.zero_(), dv1.zero_(), dv2.zero_()
    (L1, R1), (L2, R2) = prob.band1, prob.band2
    bd = block_d(D)
    arch = arch_of(q.device)
    fp32 = q.dtype == torch.float32
    common = (
        *seqs.strides(q), *seqs.strides(k1), *seqs.strides(k2), *seqs.strides(v1), *seqs.strides(v2),
        *seqs.strides(dout), *seqs.strides(lse)[:2],
    )  # fmt: skip
    sizes = (seqs.n, group, D, L1, R1, L2, R2, prob.scale)
    det = prob.logits == "determinant"
    flags = dict(
        BLOCK_D=bd, VARLEN=seqs.packed, DET=det,
        INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
    )  # fmt: skip

    counts = {k: paths.buffer(k, q) for k in ("bwd_delta", "bwd_dq", "bwd_dkv1", "bwd_dkv2")}
    with device_guard(q):
        # Delta is per row: a packed layout is one batch of all T rows.
        _delta_kernel[(triton.cdiv(N, DELTA_BLOCK_N), HQ, B)](
            out, dout, delta, counts["bwd_delta"], *seqs.strides(out), *seqs.strides(dout), *seqs.strides(delta)[:2],
            N, D, BLOCK_N=DELTA_BLOCK_N, BLOCK_D=bd, COUNT_PATHS=counts["bwd_delta"] is not None,
        )  # fmt: skip

        block_h = head_block(group, head_packing, "bwd_dq", arch, bd, fp32, forced.get("bwd_dq"), det)
        dq_kernel = configs.autotuned(
            "bwd_dq", _two_simplicial_bwd_dq_kernel, arch, bd, fp32, block_h >= 64, forced.get("bwd_dq"), det
        )
        n_hblk = triton.cdiv(group, block_h)
        dq_kernel[lambda m: (triton.cdiv(seqs.max_len, m["BLOCK_M"] // block_h), HKV * n_hblk, seqs.count)](

            q, k1, k2, v1, v2, dout, lse, lse_lo, delta, dq, seqs.cu_seqlens, counts["bwd_dq"], *common,
            *seqs.strides(dq)[:3], *sizes,
            BLOCK_H=block_h, COUNT_PATHS=counts["bwd_dq"] is not None, **flags,
        )  # fmt: skip

        dkv1_kernel = configs.autotuned(
            "bwd_dkv1", _two_simplicial_bwd_dkv1_kernel, arch, bd, fp32, forced=forced.get("bwd_dkv1"), det=det
        )
        dkv1_kernel[lambda m: (triton.cdiv(seqs.max_len, m["BLOCK_J"]), HKV, seqs.count)](
            q, k1, k2, v1, v2, dout, lse, lse_lo, delta, dk1, dv1, seqs.cu_seqlens, counts["bwd_dkv1"], *common,
            *seqs.strides(dk1)[:3], *sizes,
            COUNT_PATHS=counts["bwd_dkv1"] is not None, **flags,
        )  # fmt: skip

        dkv2_kernel = configs.autotuned(
            "bwd_dkv2", _two_simplicial_bwd_dkv2_kernel, arch, bd, fp32, forced=forced.get("bwd_dkv2"), det=det
        )
        dkv2_kernel[lambda m: (triton.cdiv(seqs.max_len, m["BLOCK_K"]), HKV, seqs.count)](
            q, k1, k2, v1, v2, dout, lse, lse_lo, delta, dk2, dv2, seqs.cu_seqlens, counts["bwd_dkv2"], *common,
            *seqs.strides(dk2)[:3], *sizes,
            COUNT_PATHS=counts["bwd_dkv2"] is not None, **flags,
        )  # fmt: skip
    for kernel, kernel_counts in counts.items():
        paths.add(kernel, bd, kernel_counts)
    return dq, dk1, dk2, dv1, dv2
