"""Host-side pieces the launchers share: the layout of a call, tile sizes, checks and copies.

Nothing here runs on the device; the kernels' own pieces are the @triton.jit modules (seqlen,
tiles, kv, mask, operand, softmax, coverage).
"""

import typing

import torch
import triton

from . import configs
from .runtime import check_device, is_interpreting


def check_tensors(*tensors):
    """What the fused kernels cannot run, as a clear error (the API validates shapes before us)."""
    check_device(*tensors)
    b, _, hq, _ = tensors[0].shape
    if b > 65535 or hq > 65535:  # grid axes 1 and 2 hold heads and batch
        raise ValueError(f"the triton backend supports B and Hq up to 65535; got B={b}, Hq={hq}")


class Layout(typing.NamedTuple):
    """How a launch covers the sequences (seqlen.py). Batched: `count` = B sequences of `n`
    rows each. Packed (prob.cu_seqlens): `count` = S sequences of the one packed row, each at
    most `max_len` rows, their bounds read by the kernels from `cu_seqlens` (n = 0, unused)."""

    count: int
    n: int
    max_len: int
    cu_seqlens: torch.Tensor | None

    @property
    def packed(self):
        return self.cu_seqlens is not None

    def strides(self, t):
        """t's strides for a kernel. Packed: batch stride 0 (B = 1). Any integer argument that
        depends on T would make a new packing recompile (triton specialises integers on
        divisibility by 16); the lse head stride, T itself, is do_not_specialize."""
        return (0, *t.stride()[1:]) if self.packed else t.stride()


def layout(q, prob):
    """The Layout of a call with query q and Problem prob."""
    if prob.cu_seqlens is None:
        return Layout(q.shape[0], q.shape[1], q.shape[1], None)
    count = prob.cu_seqlens.numel() - 1
    if count > 65535:  # grid axis 2 holds the sequences
        raise ValueError(f"the triton backend supports up to 65535 packed sequences; got {count}")
    return Layout(count, 0, prob.max_seqlen, prob.cu_seqlens)


def block_d(d):
    """The padded head dim: a power of two >= 16 (tl.dot's minimum K); columns >= D are masked."""
    return max(16, triton.next_power_of_2(d))


def arch_of(device):
    """The config class of `device` (see configs.arch_class), or INTERP when interpreting."""
    if is_interpreting():
        return configs.INTERP
    return configs.arch_class(torch.cuda.get_device_capability(device))


def head_block(group, head_packing, kernel, arch, bd, fp32, forced=None, det=False):
    """Heads per tile for fwd / bwd_dqkv2: 1 (sequence tiling) or the group's heads, padded to a
    power of two and capped by the smallest BLOCK_M of the configs (or of the one config
    `forced`). `head_packing=None` packs when the group has >= 16 query heads per kv head
    (issue 4)."""
    if head_packing is None:
        head_packing = group >= 16
    if not head_packing:
        return 1
    return min(triton.next_power_of_2(group), configs.min_block(kernel, arch, bd, fp32, "BLOCK_M", forced, det))


def column_mode(group, w2, head_packing, arch, bd, fp32, forced=None, det=False, rows_fit=True):
    """bwd_dkv1's (HEADS, BLOCK_H) (configs.column_mode) for a group of `group` heads and a k
    window of `w2` positions, from the smallest BLOCK_C of its HEADS and POSITIONS lists (or of
    the one config `forced`). `head_packing` True / False forces HEADS / POSITIONS (tests;
    determinant logits always take POSITIONS). HEADS launches with the HEADS list. Where the k2 /
    v2 rows of a query block do not fit 32-bit offsets (`rows_fit` False: k_rows_fit), POSITIONS."""
    if not rows_fit:
        return False, 1
    heads_c = configs.min_block("bwd_dkv1", arch, bd, fp32, "BLOCK_C", forced, det, packed=True)
    positions_c = configs.min_block("bwd_dkv1", arch, bd, fp32, "BLOCK_C", forced, det, packed=False)
    if head_packing is None or det:
        return configs.column_mode(group, w2, heads_c, det, bd, positions_c)
    if head_packing:
        return True, min(triton.next_power_of_2(group), heads_c)
    return False, 1


def k_rows_fit(w2, n, *tensors):
    """Whether bwd_dkv1's HEADS columns may address the k2 / v2 rows of a query block at 32-bit
    offsets from its first: at most min(w2 + 128, n) rows (w2 = L2 + R2 + 1; a block has at most
    128 queries), at the tensors' row strides."""
    return all(min(w2 + 128, n) * t.stride(1) < 2**31 for t in tensors)


def int32_tiles(t):
    """t, or a contiguous copy of t when offsets inside one tile might not fit in int32.

    Kernels address a tile as a 64-bit scalar base (batch, head, first position) plus 32-bit
    offsets for up to 256 positions, 128 heads and 256 channels. A strided view with huge
    strides (a slice of a much larger tensor) could overflow that; contiguous data cannot.
    """
    span = 256 * t.stride(1) + 128 * t.stride(2) + 256 * t.stride(3)
    return t if span < 2**31 else t.contiguous()
