"""The Triton backend's launchers: the package's backend interface (simplicial_attn/backends/__init__.py;
`prob` is the call's Problem, simplicial_attn/problem.py).

    fwd(q, k1, k2, v1, v2, prob) -> (out, lse, lse_lo)                            fwd.py
    bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob) -> (dq, dk1, dk2, dv1, dv2)
        Delta preprocess (bwd_delta.py), then dq with dk2 / dv2 partials (bwd_dqkv2.py) and
        their reduce, and dk1 / dv1 (bwd_dkv1.py): every gradient element written by exactly
        one program with a fixed summation order, so the backward is deterministic.
    decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob) -> (out, lse)           decode.py

Each picks its configs (configs.py), sizes the grid and counts the interpreter's paths
(coverage.py); the kernels are the @triton.jit modules named above.
"""

import torch
import triton

from . import configs, coverage
from .bwd_delta import _delta_kernel
from .bwd_dkv1 import _two_simplicial_bwd_dkv1_kernel
from .bwd_dqkv2 import _reduce_dkv2_kernel, _two_simplicial_bwd_dqkv2_kernel
from .decode import _decode_combine_kernel, _decode_split_kernel
from .fwd import _two_simplicial_fwd_kernel
from .host import arch_of, block_d, check_tensors, column_mode, head_block, int32_tiles, k_rows_fit, layout
from .runtime import device_guard, input_precision, is_interpreting

# Rows of the Delta preprocess per program: at 32 its [rows, 256] float32 tiles spill on sm_100.
DELTA_BLOCK_N = 16
# Rows of the dk2 / dv2 reduce per program: two [rows, D] float32 sums, as small as Delta's.
REDUCE_BLOCK_R = 16


def _descriptor_rows(*tensors):
    """Whether tensor descriptors (TMA) can read these tensors' rows ([B, N, H, D] inputs, or
    bwd_dqkv2's partial scratch): contiguous channels, base and every other stride 16-byte aligned
    (a program's first row, b * stride_b + g * stride_h + start * stride_n, is then aligned too)."""
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])
        for t in tensors
    )


def _torch_scratch(size, alignment, stream):  # noqa: ARG001 (triton's allocator signature)
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _descriptor_scratch():
    """Tensor descriptors built in a kernel live in global scratch that triton allocates per launch
    through triton.set_allocator: ours (torch's caching allocator) unless the caller set one."""
    try:
        from triton.runtime._allocation import NullAllocator, _allocator

        if not isinstance(_allocator.get(), NullAllocator):
            return
    except ImportError:  # another triton layout: set ours
        pass
    triton.set_allocator(_torch_scratch)


def raw_logit_scale(q, scale):
    """(q, scale, NEG_SCALE) for the forward and decode kernels, whose softmax keeps its running
    max in raw logits s and takes the scale in the exponent (softmax.py): a negative scale
    negates the pair operand in the kernel (NEG_SCALE); scale 0 makes every logit 0 * s, which
    the kernel gets as q * 0 (zeros; NaN where q is not finite, as 0 * s is) at scale 1."""
    if scale == 0:
        return q * 0, 1.0, False
    return q, scale, scale < 0


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
    q, scale, neg_scale = raw_logit_scale(q, prob.scale)
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
    kv_aligned = _descriptor_rows(k1, v1)  # configs with TMA=True read k1/v1 through descriptors
    if kv_aligned and not is_interpreting():
        _descriptor_scratch()

    def grid(meta):
        return (triton.cdiv(seqs.max_len, meta["BLOCK_M"] // block_h), HKV * triton.cdiv(group, block_h), seqs.count)

    counts = coverage.buffer("fwd", q)
    with device_guard(q):
        kernel[grid](
            q, k1, k2, v1, v2, out, lse, lse_lo, seqs.cu_seqlens, counts,
            *seqs.strides(q), *seqs.strides(k1), *seqs.strides(k2), *seqs.strides(v1), *seqs.strides(v2),
            *seqs.strides(out)[:3],
            *seqs.strides(lse)[:2],
            seqs.n, group, D, L1, R1, L2, R2,
            scale,
            BLOCK_H=block_h, BLOCK_D=bd, VARLEN=seqs.packed, DET=det,
            INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
            COUNT_PATHS=counts is not None, KV_ALIGNED=kv_aligned, NEG_SCALE=neg_scale,
        )  # fmt: skip
    coverage.add("fwd", bd, counts)
    return out, lse, lse_lo


def bwd(
    dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, *, head_packing=None, allow_tf32=False, config=None, span=None
):
    """(dq, dk1, dk2, dv1, dv2), each shaped and typed like its input, contiguous.

    Shapes and `prob` as in `fwd`; `out`, `lse` and `lse_lo` are the forward's. With GQA a kv
    gradient sums over the query heads sharing the kv head. `head_packing`, `allow_tf32` and
    `config` (keys "bwd_dqkv2", "bwd_dkv1") as in `fwd`; for bwd_dkv1 `head_packing` True / False
    forces its HEADS / POSITIONS columns (host.column_mode). `span` fixes the positions per
    program of the dq / dk2 / dv2 kernel (tests; a multiple of its tile's positions), else
    dqkv2_span picks it.
    """
    forced = configs.forced_configs(config, ("bwd_dqkv2", "bwd_dkv1"))
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

    # dq / dk2 / dv2: programs of `span` positions x block_h heads; partials in `scratch`.
    block_h, packed_heads, positions = dqkv2_tiling(group, head_packing, arch, bd, fp32, forced.get("bwd_dqkv2"), det)
    n_hblk = triton.cdiv(group, block_h)
    if span is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else None
        span = dqkv2_span(sms, seqs.max_len, positions, L2 + R2, HKV * n_hblk * seqs.count)
    elif span % positions:
        raise ValueError(f"span must be a multiple of {positions} (the tile's positions); got {span}")
    spans, layers = triton.cdiv(seqs.max_len, span), dqkv2_layers(seqs.max_len, span, L2 + R2)
    scratch = torch.zeros(dqkv2_scratch_shape(layers, B * N, HKV, n_hblk, D), dtype=torch.float32, device=q.device)
    stride_sb = 0 if seqs.packed else N * scratch.stride(2)
    # dq slots of the configs with DQ_SCRATCH (bwd_dqkv2.py): never read before written, so not zeroed.
    programs = (spans, HKV * n_hblk, seqs.count)
    slot_rows = dq_slot_rows("bwd_dqkv2", arch, bd, fp32, packed_heads, forced.get("bwd_dqkv2"), det)
    dq_slots = torch.empty(max(1, programs[0] * programs[1] * programs[2] * slot_rows * bd), dtype=torch.float32,
                           device=q.device)  # fmt: skip
    # operand slots of the configs with AB_SLOT (bwd_dqkv2.py): written before read, so not zeroed.
    ab_rows = ab_slot_rows(arch, bd, fp32, packed_heads, forced.get("bwd_dqkv2"), det)
    ab_slots = torch.empty(max(1, programs[0] * programs[1] * programs[2] * ab_rows * bd), dtype=q.dtype,
                           device=q.device)  # fmt: skip

    counts = {k: coverage.buffer(k, q) for k in ("bwd_delta", "bwd_dqkv2", "bwd_reduce2", "bwd_dkv1")}
    with device_guard(q):
        # Delta is per row: a packed layout is one batch of all T rows.
        _delta_kernel[(triton.cdiv(N, DELTA_BLOCK_N), HQ, B)](
            out, dout, delta, counts["bwd_delta"], *seqs.strides(out), *seqs.strides(dout), *seqs.strides(delta)[:2],
            N, D, BLOCK_N=DELTA_BLOCK_N, BLOCK_D=bd, COUNT_PATHS=counts["bwd_delta"] is not None,
        )  # fmt: skip

        dqkv2_kernel = configs.autotuned(
            "bwd_dqkv2", _two_simplicial_bwd_dqkv2_kernel, arch, bd, fp32, packed_heads, forced.get("bwd_dqkv2"), det
        )
        # configs with TMA=True read q, dout, k2, v2 and store dq through descriptors
        q_aligned = _descriptor_rows(q, dout, dq, k2, v2)
        kv_aligned = _descriptor_rows(k1, v1)  # configs with KV1_TMA=True read k1/v1 through descriptors
        if not is_interpreting():  # descriptors of q (TMA), k1 / v1 (KV1_TMA) or the scratch (PART_TMA)
            _descriptor_scratch()
        dqkv2_kernel[programs](
            q, k1, k2, v1, v2, dout, lse, lse_lo, delta, dq, dq_slots, ab_slots, scratch[0], scratch[1],
            seqs.cu_seqlens, counts["bwd_dqkv2"], *common, *seqs.strides(dq)[:3],
            scratch.stride(1), stride_sb, scratch.stride(2), *sizes, span, layers,
            BLOCK_H=block_h, COUNT_PATHS=counts["bwd_dqkv2"] is not None, Q_ALIGNED=q_aligned,
            KV_ALIGNED=kv_aligned, PART_ALIGNED=_descriptor_rows(scratch), **flags,
        )  # fmt: skip
        _reduce_dkv2_kernel[(triton.cdiv(B * N, REDUCE_BLOCK_R), HKV)](
            scratch[0], scratch[1], dk2, dv2, counts["bwd_reduce2"],
            B * N, D, n_hblk, layers, scratch.stride(1), scratch.stride(2), dk2.stride(1), dk2.stride(2),
            prob.scale, BLOCK_R=REDUCE_BLOCK_R, BLOCK_D=bd, COUNT_PATHS=counts["bwd_reduce2"] is not None,
        )  # fmt: skip

        # dk1 / dv1: one program per tile of BLOCK_J k1/v1 positions; columns of heads or of k's.
        forced_dkv1 = forced.get("bwd_dkv1")
        rows_fit = k_rows_fit(L2 + R2 + 1, N, k2, v2)
        heads, heads_per_block = column_mode(
            group, min(L2 + R2 + 1, N), head_packing, arch, bd, fp32, forced_dkv1, det, rows_fit
        )
        dkv1_kernel = configs.autotuned("bwd_dkv1", _two_simplicial_bwd_dkv1_kernel, arch, bd, fp32, heads,
                                        forced=forced_dkv1, det=det)  # fmt: skip
        dkv1_kernel[lambda m: (triton.cdiv(seqs.max_len, m["BLOCK_J"]), HKV, seqs.count)](
            q, k1, k2, v1, v2, dout, lse, lse_lo, delta, dk1, dv1, seqs.cu_seqlens, counts["bwd_dkv1"], *common,
            *seqs.strides(dk1)[:3], *sizes,
            HEADS=heads, BLOCK_H=heads_per_block, COUNT_PATHS=counts["bwd_dkv1"] is not None, **flags,
        )  # fmt: skip
    for kernel, kernel_counts in counts.items():
        coverage.add(kernel, bd, kernel_counts)
    return dq, dk1, dk2, dv1, dv2


def dqkv2_tiling(group, head_packing, arch, bd, fp32, forced=None, det=False):
    """(block_h, packed, positions) of the dq / dk2 / dv2 kernel: heads per tile (head_block),
    whether it takes the head-packed config list (any packed heads: that list's smallest
    BLOCK_M capped block_h) and the most positions a tile of its configs holds (a span is a
    multiple of it)."""
    block_h = head_block(group, head_packing, "bwd_dqkv2", arch, bd, fp32, forced, det)
    packed = block_h > 1
    chosen = configs.config_list("bwd_dqkv2", arch, bd, fp32, packed, forced, det)
    return block_h, packed, max(c.kwargs["BLOCK_M"] // block_h for c in chosen)


def dq_slot_rows(kernel, arch, bd, fp32, packed, forced=None, det=False):
    """Rows of one program's float32 dq slot (bwd_dqkv2.py, DQ_SCRATCH): the largest BLOCK_M among
    the configs that keep dq in the slot, 0 when none does. The slots take programs x rows x BLOCK_D
    x 4 bytes, a float32 copy of the tile rows the programs hold at once: with spans of S positions
    a fraction BLOCK_M / BLOCK_H / S of a float32 dq (padded to BLOCK_D and the head blocks)."""
    chosen = configs.config_list(kernel, arch, bd, fp32, packed, forced, det)
    return max((c.kwargs["BLOCK_M"] for c in chosen if c.kwargs.get("DQ_SCRATCH")), default=0)


def ab_slot_rows(arch, bd, fp32, packed, forced=None, det=False):
    """Rows of one program's operand slot (bwd_dqkv2.py, AB_SLOT): 2 x the largest BLOCK_M among the
    configs that pass a and bo through it, 0 when none does; programs x rows x BLOCK_D elements of
    the inputs' dtype, as large as the dq slots at 16-bit (BLOCK_M / BLOCK_H / S of a dq)."""
    chosen = configs.config_list("bwd_dqkv2", arch, bd, fp32, packed, forced, det)
    return 2 * max((c.kwargs["BLOCK_M"] for c in chosen if c.kwargs.get("AB_SLOT")), default=0)


def dqkv2_layers(max_len, span, band):
    """Scratch layers of the dq / dk2 / dv2 kernel: a program of `span` positions touches k rows
    over span + band (band = L2 + R2 = w2 - 1), so programs `layers` spans apart never share a
    row; never more than the spans of the longest sequence."""
    return max(1, min(triton.cdiv(max_len, span), 1 + triton.cdiv(band, span)))


def dqkv2_span(sms, max_len, positions, band, programs_per_span):
    """Positions per program of the dq / dk2 / dv2 kernel, a multiple of the tile's `positions`:
    the smallest span that covers the k2 window (band = w2 - 1 positions, so 2 scratch layers),
    unless that leaves fewer than 2 programs per SM (`sms` SMs; None when interpreting: 4
    programs, so tests see several layers): then smaller spans and more layers. From shapes and
    the device only."""
    target = 2 * sms if sms else 4
    cover = triton.cdiv(max(band, 1), positions) * positions
    fill = max(max_len // triton.cdiv(target, programs_per_span) // positions, 1) * positions
    return max(positions, min(cover, fill))


def dqkv2_scratch_shape(layers, rows, hkv, n_hblk, d):
    """The float32 scratch of the dk2 / dv2 partials: [2 (dk2, dv2), layers, rows (B * N, or the
    packing's T), Hkv * n_hblk, D], i.e. 8 * layers * rows * Hkv * n_hblk * D bytes."""
    return (2, layers, rows, hkv * n_hblk, d)


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
    prob.band1, prob.band2 causal bands (right == 0). `num_splits` fixes the number of j-window
    splits (tests); by default it follows the shapes and the device (see _num_splits).
    `config={"decode": cfg}` launches with the triton.Config `cfg` instead of the shipped one.
    """
    forced = configs.forced_configs(config, ("decode",)).get("decode")
    check_tensors(q, k1_cache, k2_cache, v1_cache, v2_cache)
    q, scale, neg_scale = raw_logit_scale(q, prob.scale)
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
    counts = {k: coverage.buffer(k, q) for k in ("decode", "decode_combine")}
    with device_guard(q):
        _decode_split_kernel[(n_rb * splits, HKV, B)](
            q, k1_cache, k2_cache, v1_cache, v2_cache, prob.cache_seqlens, m_part, l_part, acc_part, counts["decode"],
            *q.stride(), *k1_cache.stride(), *k2_cache.stride(), *v1_cache.stride(), *v2_cache.stride(),
            NQ, HQ, group, D, C1, C2, L1, L2, split_j, splits,
            scale,
            BLOCK_D=bd, DET=prob.logits == "determinant",
            INPUT_PRECISION=input_precision(q.dtype, allow_tf32), UPCAST=is_interpreting(),
            COUNT_PATHS=counts["decode"] is not None, NEG_SCALE=neg_scale,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs,
        )  # fmt: skip
        _decode_combine_kernel[(NQ, HQ, B)](
            m_part, l_part, acc_part, out, lse, counts["decode_combine"],
            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
            NQ, HQ, D, splits,
            BLOCK_S=max(2, triton.next_power_of_2(splits)), BLOCK_D=bd,
            COUNT_PATHS=counts["decode_combine"] is not None,
        )  # fmt: skip
    coverage.add("decode", bd, counts["decode"])
    coverage.add("decode_combine", bd, counts["decode_combine"])
    return out, lse
