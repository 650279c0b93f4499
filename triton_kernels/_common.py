"""Pieces every Triton kernel of this package shares: the dot wrapper, the softmax exponents
(natural units, subtract first: issue 14), window geometry, flags.

Window geometry. Every window is a band around the query position i:

    J(i) = [i - L1, i + R1]   (k1/v1 positions j)      K(i) = [i - L2, i + R2]   (k2/v2 positions k)

    causal:   L = w - 1,  R = 0                       centred:  L = w // 2,  R = w - 1 - w // 2

clipped to [0, N). The launchers read (L, R) from the call's Problem (prob.band1, prob.band2:
simplicial_attn/problem.py, window_band), so one code path serves both modes.
"""

import contextlib
import os
import typing

import torch
import triton
import triton.language as tl

from . import paths

(P_LAST_TILE, P_D_TAIL, P_GQA, P_CAUSAL, P_CENTRED, P_PACKED, P_PACKED_EDGE, P_PAST_END, P_EMPTY_SEQ, P_DET) = (
    paths.COMMON_SLOTS
)
# fwd and bwd_dq share the query tile and its two loops (over u = i - k, then j-blocks):
#   u_repeat / j_repeat   a second (third, ...) trip of the u / j loop
#   k_outside            a row whose k = i - u lies outside [0, N) (k2/v2 rows zero-filled)
#   j_tail / j_past_n     a j-block with rows past the tile's j range / past N (zero-filled)
#   head_packed          BLOCK_H > 1;  head_tail: rows past the group's last head (masked)
P_U_REPEAT, P_K_OUTSIDE, P_J_REPEAT, P_J_TAIL, P_J_PAST_N, P_HEAD_PACKED, P_HEAD_TAIL = paths.slots(
    ("fwd", "bwd_dq"), "u_repeat", "k_outside", "j_repeat", "j_tail", "j_past_n", "head_packed", "head_tail"
)

# The opt-in for TF32 tensor cores on float32 inputs (CONTRACT §5: 2e-3 instead of 1e-5).
TF32_ENV = "SIMPLICIAL_ATTN_ALLOW_TF32"


def is_interpreting():
    """True when triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1).

    The flag is read by `@triton.jit` when a kernel module is imported, so the kernels' own
    type is the truth, not today's environment.
    """
    from .fwd import _two_simplicial_fwd_kernel

    return not isinstance(_two_simplicial_fwd_kernel, triton.runtime.JITFunction)


def block_d(d):
    """The padded head dim: a power of two >= 16 (tl.dot's minimum K); columns >= D are masked."""
    return max(16, triton.next_power_of_2(d))


def input_precision(dtype, allow_tf32):
    """How tl.dot treats float32 operands: exact-ish IEEE by default, TF32 only when asked for."""
    if dtype == torch.float32 and (allow_tf32 or os.environ.get(TF32_ENV, "0") == "1"):
        return "tf32"
    return "ieee"


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation.

    The interpreter's tl.dot on bfloat16 multiplies the raw bits (BUILD-NOTES), so when
    interpreting the operands, already rounded to the input dtype, are widened to float32:
    the products are then exact and the sum float32, which is what tensor cores compute.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def exp_shifted(x, m):
    """exp(x - m) for a logit x and a running max m, both in natural units (issue 14): subtract
    first, exact near the max, then scale to base 2. Never fma(x, log2e, -m * log2e): the
    rounding of m * log2e would go straight into the exponent (1e-4 relative at |m| ~ 1e3)."""
    return tl.exp2((x - m) * 1.4426950408889634)


@triton.jit
def recomputed_p(t):
    """P = exp(t) of a backward's recomputed shifted logit t = z - lse (natural units, -inf
    outside the window). A true P never exceeds 1, so t is clamped at 0: a recomputation that
    rounds above the forward's can never overflow. A select, not tl.minimum, so NaN stays NaN."""
    return tl.exp2(tl.where(t > 0, 0.0, t) * 1.4426950408889634)


@triton.jit
def count_common_paths(
    COUNTS, tile0, n, D, GROUP, R1, R2,
    TILE: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, DET: tl.constexpr,
):  # fmt: skip
    """Counts paths.COMMON for the program whose tile covers positions [tile0, tile0 + TILE) of
    a sequence of n rows (only called under `if COUNT_PATHS:`, before a past-the-end exit)."""
    inside = tile0 < n
    tl.atomic_add(COUNTS + P_LAST_TILE, tl.where(inside & (tile0 + TILE > n), 1, 0))
    tl.atomic_add(COUNTS + P_PAST_END, tl.where(inside, 0, 1))
    tl.atomic_add(COUNTS + P_D_TAIL, tl.where(D < BLOCK_D, 1, 0))
    tl.atomic_add(COUNTS + P_GQA, tl.where(GROUP > 1, 1, 0))
    tl.atomic_add(COUNTS + P_CAUSAL, tl.where((R1 == 0) & (R2 == 0), 1, 0))
    tl.atomic_add(COUNTS + P_CENTRED, tl.where((R1 > 0) | (R2 > 0), 1, 0))
    if VARLEN:
        tl.atomic_add(COUNTS + P_PACKED, tl.where(inside, 1, 0))
        tl.atomic_add(COUNTS + P_PACKED_EDGE, tl.where(inside & (tile0 + TILE == n), 1, 0))
        tl.atomic_add(COUNTS + P_EMPTY_SEQ, tl.where(n == 0, 1, 0))
    if DET:
        tl.atomic_add(COUNTS + P_DET, 1)


@triton.jit
def sequence_span(CU_SEQLENS, N, VARLEN: tl.constexpr):
    """(start, n): the first row and the length of this program's sequence (grid axis 2).

    Batched: batch tl.program_id(2), rows [0, N) (start is 0). Packed (VARLEN): sequence
    s = tl.program_id(2) of the one packed row, rows [cu[s], cu[s+1]) (start int64); the
    launcher passes batch strides 0, so the batch index adds nothing."""
    if VARLEN:
        s = tl.program_id(2)
        first = tl.load(CU_SEQLENS + s)
        start = first.to(tl.int64)
        n = tl.load(CU_SEQLENS + s + 1) - first
    else:
        start = 0
        n = N
    return start, n


@triton.jit
def chunk_shifts(d, D):
    """Channel shifts s(d) - d and s(s(d)) - d, s(d) = 3 (d // 3) + (d + 1) % 3 the next channel of
    d's 3-channel chunk (CONTRACT §8); 0 for padded channels d >= D (D % 3 == 0). The
    determinant logit's operands are cross products per chunk,

        (a x b)[d] = a[s(d)] b[s(s(d))] - a[s(s(d))] b[s(d)],

    formed from loads at these shifted channels (or tl.gather of register tiles)."""
    c = 3 * (d // 3)
    return tl.where(d < D, c + (d + 1) % 3 - d, 0), tl.where(d < D, c + (d + 2) % 3 - d, 0)


@triton.jit
def channels_at(x, d, shift):
    """x[:, d + shift[d]]: a register tile's channels permuted along axis 1 (chunk_shifts)."""
    return tl.gather(x, tl.broadcast_to((d + shift)[None, :], x.shape), 1)


@triton.jit
def query_tile(N, GROUP, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """The rows of this program in fwd / bwd_dq (see fwd.py): row r is position p0 + rp[r] of
    query head h0 + rh[r], all sharing kv head g; row_ok is False past N (the length of the
    program's sequence) or past the group.

    Returns (p0, g, b, h0, rp, rh, pos, row_ok); b and h0 are int64 (scalar address bases)."""
    BLOCK_P: tl.constexpr = BLOCK_M // BLOCK_H
    n_hblk = tl.cdiv(GROUP, BLOCK_H)
    p0 = tl.program_id(0) * BLOCK_P
    g = tl.program_id(1) // n_hblk
    hb = tl.program_id(1) % n_hblk
    b = tl.program_id(2).to(tl.int64)
    h0 = g.to(tl.int64) * GROUP + hb * BLOCK_H
    rows = tl.arange(0, BLOCK_M)
    rp = rows // BLOCK_H
    rh = rows % BLOCK_H
    pos = p0 + rp
    row_ok = (pos < N) & (hb * BLOCK_H + rh < GROUP)
    return p0, g, b, h0, rp, rh, pos, row_ok


@triton.jit
def query_tile_loops(p0, N, L1, R1, L2, R2, BLOCK_P: tl.constexpr):
    """Loop bounds of a query tile whose positions span [p0, p0 + BLOCK_P): only offsets u that
    put some k = i - u inside [0, N), and only j in the union of the rows' J(i).

    Returns (u_lo, u_hi, j_lo, j_hi), all inclusive."""
    p_last = tl.minimum(p0 + BLOCK_P - 1, N - 1)
    u_lo = tl.maximum(-R2, p0 - N + 1)
    u_hi = tl.minimum(L2, p_last)
    j_lo = tl.maximum(p0 - L1, 0)
    j_hi = tl.minimum(p_last + R1, N - 1)
    return u_lo, u_hi, j_lo, j_hi


@triton.jit
def j_window_mask(row_ok, pos, j_ok, js, L1, R1):
    """[rows, j] mask of the pairs that count: the row and j are valid and j is in
    J(pos) = [pos - L1, pos + R1]."""
    return row_ok[:, None] & j_ok[None, :] & (js[None, :] >= pos[:, None] - L1) & (js[None, :] <= pos[:, None] + R1)


@triton.jit
def row_block_ptrs(X, b, g, start, stride_b, stride_n, stride_h, stride_d, r, d):
    """Pointers to rows start + r, channels d of X[b, :, g, :]: a 64-bit scalar base plus 32-bit
    in-tile offsets (the launcher guarantees those fit, see int32_tiles)."""
    return X + b * stride_b + g * stride_h + start * stride_n + (r[:, None] * stride_n + d[None, :] * stride_d)


def check_tensors(*tensors):
    """What this backend cannot run, as a clear error (the API validates shapes before us)."""
    dtype = tensors[0].dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the triton backend supports float16, bfloat16 and float32; got {dtype}")
    b, _, hq, _ = tensors[0].shape
    if b > 65535 or hq > 65535:  # grid axes 1 and 2 hold heads and batch
        raise ValueError(f"the triton backend supports B and Hq up to 65535; got B={b}, Hq={hq}")
    if tensors[0].device.type != "cuda" and not is_interpreting():
        raise ValueError(
            f"the triton backend needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1); "
            f"got {tensors[0].device.type} tensors"
        )


class Layout(typing.NamedTuple):
    """How a launch covers the sequences (interface.md). Batched: `count` = B sequences of `n`
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


def arch_of(device):
    """The config class of `device` (see configs.arch_class), or INTERP when interpreting."""
    from . import configs

    if is_interpreting():
        return configs.INTERP
    return configs.arch_class(torch.cuda.get_device_capability(device))


def head_block(group, head_packing, kernel, arch, bd, fp32, forced=None, det=False):
    """Heads per tile for fwd / bwd_dq: 1 (sequence tiling) or the group's heads, padded to a
    power of two and capped by the smallest BLOCK_M of the configs (or of the one config
    `forced`). `head_packing=None` packs when the group has >= 16 query heads per kv head
    (issue 4)."""
    from . import configs

    if head_packing is None:
        head_packing = group >= 16
    if not head_packing:
        return 1
    return min(triton.next_power_of_2(group), configs.min_block(kernel, arch, bd, fp32, "BLOCK_M", forced, det))


def device_guard(t):
    """Launch on t's GPU (not the current one); nothing to do for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def int32_tiles(t):
    """t, or a contiguous copy of t when offsets inside one tile might not fit in int32.

    Kernels address a tile as a 64-bit scalar base (batch, head, first position) plus 32-bit
    offsets for up to 256 positions, 128 heads and 256 channels. A strided view with huge
    strides (a slice of a much larger tensor) could overflow that; contiguous data cannot.
    """
    span = 256 * t.stride(1) + 128 * t.stride(2) + 256 * t.stride(3)
    return t if span < 2**31 else t.contiguous()
