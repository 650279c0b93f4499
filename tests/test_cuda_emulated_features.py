"""Packed sequences (CONTRACT §6), determinant logits (§8) and decoding (§7) in the CUDA C++ kernels,
on the CPU emulator (tests/cuda_emulator.py), against the float64 oracle.

The kernels implement each natively: varlen grids over (tile of a sequence, heads, sequence)
with per-row window bounds (packings with empty, length-1 and longer-than-a-tile sequences,
boundaries inside tiles and at a tile's edge); determinant logits as k2 × q per 3-channel chunk
in the logit GEMM and cross products in the dq / dk2 epilogues (head dims 48, 96, 192: padded 64, 128, 256, the
column splits at 128 and 256 cut chunks); decoding as split-j partial softmaxes plus a combine
kernel over ring caches (several splits, wrapped rings, Nq > 1, GQA, a split before the
sequence's start, each at head dims 64, 128, 256). Every run also feeds tests/test_cuda_paths.py's
coverage check (RUNS below).
Runtime: ~40 s.
"""

import cuda_emulator as emu
import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, bands, make_dout, make_inputs, make_packed, rel_err
from oracle import oracle_bwd, oracle_decode, oracle_fwd, oracle_varlen_bwd, oracle_varlen_fwd

pytestmark = pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")

GRADS = ("dq", "dk1", "dk2", "dv1", "dv2")


def _check(name, got, ref, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN (an element no kernel wrote keeps the driver's NaN poison)"
    err = rel_err(got, ref)
    assert err <= BOUNDS[dtype], f"{name}: relative error {err:.2e} > {BOUNDS[dtype]:.0e}"


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


# ---- packed sequences ---------------------------------------------------------------------------

# (lengths, Hq, Hkv, D, w1, w2, causal, logits); windows are kernel windows (ints).
PACKINGS = [
    # empty, length 1, a sequence of exactly one 64-row tile (every kernel's tile at padded 64), two
    # tiles with a partial last one, GQA 2
    ([0, 1, 64, 70, 5], 2, 1, 40, 20, 6, True, "trilinear"),
    # padded 128: sequences shorter than the windows, one of exactly a dq / dk2 tile (32 rows), GQA 2
    ([3, 0, 32, 9], 2, 1, 96, 40, 20, False, "trilinear"),
    ([1, 20, 0, 9], 2, 1, 192, 6, 10, True, "determinant"),  # padded 256, w2 > w1 (keys swapped)
    ([0, 5, 1, 9], 3, 1, 16, 4, 3, False, "trilinear"),  # small: the SIMT kernels' bisection (fp32)
    ([2, 0, 9], 2, 1, 96, 5, 4, True, "trilinear"),  # small at padded 128, for fp32
    # head packing (the fused dq + dk2 + dv2 pass): 16 heads at padded 64, 32 at padded 128 (w2 > w1)
    ([0, 7, 1, 12], 16, 1, 64, 9, 8, True, "trilinear"),
    ([5, 0, 13], 32, 1, 100, 4, 6, False, "trilinear"),
    # Hq == Hkv: the fused pass's sequence tiles (a sequence of two tiles, the ring's wrap) at padded 64
    ([0, 40, 1, 9], 2, 2, 40, 6, 5, True, "trilinear"),
]
VARLEN_RUNS = [
    (PACKINGS[0], torch.float16),
    (PACKINGS[1], torch.bfloat16),
    (PACKINGS[2], torch.float16),
    (PACKINGS[3], torch.float32),
    (PACKINGS[4], torch.float32),
    (PACKINGS[2], torch.float32),
    (PACKINGS[5], torch.float16),
    (PACKINGS[6], torch.bfloat16),
    (PACKINGS[7], torch.float16),
]


def _pid(p):
    lengths, hq, hkv, d, w1, w2, causal, logits = p
    mode = "causal" if causal else "centred"
    return f"L{'_'.join(map(str, lengths))}-Hq{hq}-Hkv{hkv}-D{d}-w1_{w1}-w2_{w2}-{mode}-{logits}"


def run_varlen(packing, dtype):
    lengths, hq, hkv, d, w1, w2, causal, logits = packing
    (q, k1, k2, v1, v2), cu = make_packed(lengths, hq, hkv, d, dtype)
    scale = d**-0.5
    prob = Problem(*bands(w1, w2, causal), scale, logits, cu_seqlens=cu, max_seqlen=max(lengths))
    batched = [t[None] for t in (q, k1, k2, v1, v2)]
    out, lse, lse_lo = emu.fused_fwd(*batched, prob)
    ref_out, ref_lse = oracle_varlen_fwd(q, k1, k2, v1, v2, cu, w1, w2, causal, scale, logits)
    _check("out", out[0], ref_out, dtype)
    _check("lse", lse[0], ref_lse, dtype)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = emu.fused_bwd(dout[None], *batched, out, lse, lse_lo, prob)
    refs = oracle_varlen_bwd(dout, q, k1, k2, v1, v2, cu, w1, w2, causal, scale, logits)
    for name, g, r in zip(GRADS, grads, refs, strict=True):
        _check(name, g[0], r, dtype)


VARLEN = {f"varlen-{_pid(p)}-{_dtype_id(dt)}": (run_varlen, p, dt) for p, dt in VARLEN_RUNS}


@pytest.mark.parametrize("name", VARLEN)
def test_varlen_matches_the_oracle(name):
    emu.record_run(name, *VARLEN[name])


# ---- determinant logits (batched) ---------------------------------------------------------------

DET_CASES = [
    Case(1, 70, 2, 1, 48, 20, 40),  # padded 64, w2 > w1: the keys swap, the scale's sign with them
    Case(2, 20, 4, 2, 96, 6, 3, causal=False),  # padded 128: dk1/dk2 columns split at 64 (chunk 63..65)
    Case(1, 24, 2, 1, 192, 9, 5),  # padded 256: out/dq split at 128 (chunk 126..128)
    Case(1, 5, 17, 1, 24, 3, 2),  # head packing, odd group
    Case(1, 20, 2, 1, 48, 6, 9),  # small at padded 64, w2 > w1, for fp32 (the SIMT kernels visit every pair)
    Case(1, 5, 17, 1, 96, 3, 2),  # head packing at padded 128: dq's (the fused pass is trilinear only)
]
DET_RUNS = [(c, torch.float16) for c in DET_CASES[:3]] + [(c, torch.float32) for c in DET_CASES[1:3] + DET_CASES[4:5]]
DET_RUNS += [(DET_CASES[1], torch.bfloat16), (DET_CASES[3], torch.float16), (DET_CASES[5], torch.bfloat16)]


def run_determinant(case, dtype):
    q, k1, k2, v1, v2 = make_inputs(case, dtype)
    dout = make_dout(case, dtype)
    scale = case.D**-0.5
    prob = Problem(*bands(case.w1, case.w2, case.causal), scale, "determinant")
    out, lse, lse_lo = emu.fused_fwd(q, k1, k2, v1, v2, prob)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale, "determinant")
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)
    grads = emu.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale, "determinant")
    for name, g, r in zip(GRADS, grads, refs, strict=True):
        _check(name, g, r, dtype)


DETERMINANT = {f"det-{c.id}-{_dtype_id(dt)}": (run_determinant, c, dt) for c, dt in DET_RUNS}


@pytest.mark.parametrize("name", DETERMINANT)
def test_determinant_matches_the_oracle(name):
    emu.record_run(name, *DETERMINANT[name])


# ---- decoding -----------------------------------------------------------------------------------

# (B, Hq, Hkv, D, w1, w2, lengths (cache_seqlens), Nq, ring slots beyond w + Nq - 1). Rows and
# (row, split) pairs are no multiple of a CTA's 4 warps; every scenario wraps a ring and has a split
# wholly before its sequence's start.
DECODES = [
    (2, 3, 1, 48, 40, 6, (3, 77), 1, 0),  # 3 splits, GQA 3
    (2, 3, 1, 96, 40, 5, (5, 60), 3, 1),  # padded 128, Nq = 3
    (2, 3, 1, 192, 40, 4, (0, 50), 1, 0),  # padded 256, a sequence with an empty cache
]
DECODE_RUNS = [(DECODES[0], "trilinear", torch.bfloat16), (DECODES[0], "determinant", torch.float32)]
DECODE_RUNS += [(DECODES[1], "trilinear", torch.float16), (DECODES[1], "determinant", torch.bfloat16)]
DECODE_RUNS += [(DECODES[2], "determinant", torch.float32)]


def _did(s):
    B, Hq, Hkv, D, w1, w2, lengths, nq, extra = s
    return f"B{B}-Hq{Hq}-Hkv{Hkv}-D{D}-w1_{w1}-w2_{w2}-L{'_'.join(map(str, lengths))}-nq{nq}"


def run_decode(scenario, logits, dtype):
    B, Hq, Hkv, D, w1, w2, lengths, nq, extra = scenario
    N = max(lengths) + nq
    g = torch.Generator().manual_seed(0)
    q_all = torch.randn(B, N, Hq, D, generator=g).to(dtype)
    kv = [torch.randn(B, N, Hkv, D, generator=g).to(dtype) for _ in range(4)]
    c1, c2 = w1 + nq - 1 + extra, w2 + nq - 1 + extra
    caches = [torch.full((B, c, Hkv, D), float("nan"), dtype=dtype) for c in (c1, c2, c1, c2)]
    for b, L in enumerate(lengths):  # the ring after writing positions 0 .. L + nq - 1 in order
        for p in range(L + nq):
            for cache, t, c in zip(caches, kv, (c1, c2, c1, c2), strict=True):
                cache[b, p % c] = t[b, p]
    q = torch.stack([q_all[b, L : L + nq] for b, L in enumerate(lengths)])
    scale = D**-0.5
    prob = Problem(*bands(w1, w2, True), scale, logits, cache_seqlens=torch.tensor(lengths, dtype=torch.int32))
    out, lse = emu.fused_decode(q, *caches, prob)
    ref_out, ref_lse = oracle_decode(q_all, *kv, lengths, nq, w1, w2, scale, logits)
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)


DECODE = {f"decode-{_did(s)}-{lg}-{_dtype_id(dt)}": (run_decode, s, lg, dt) for s, lg, dt in DECODE_RUNS}


@pytest.mark.parametrize("name", DECODE)
def test_decode_matches_the_oracle(name):
    emu.record_run(name, *DECODE[name])


# Every run above by its record name (tests/test_cuda_paths.py): (function, arguments...).
RUNS = {**VARLEN, **DETERMINANT, **DECODE}
