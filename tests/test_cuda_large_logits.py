"""The CUDA C++ kernels at large logits (numerics rule of issue 14), on the CPU emulator.

Every kernel computes its softmax exponents as exp2((z - m) * log2 e) with z = scale * s in
natural units, saves lse and its residual lse_lo, and recomputes P in the backward as
exp2(min((z - lse) - lse_lo, 0) * log2 e) with a clamp that keeps NaN (csrc/cuda/numerics.cuh).
Without lse_lo the float32 gradients miss 1e-5 at |logit| = 1e3 (1.7e-5 .. 2.6e-5 measured).
These probes build inputs whose logits every kernel computes exactly (dyadic values, scale = 1),
so the only error left is the softmax handling, and run them with exact special functions and
with the emulated --use_fast_math arithmetic of the GPU build.

Targets (CONTRACT §4, §5): within the dtype's bound up to |logit| = 1e3, within 2e-3 (or the
dtype's bound, if larger) up to 1e4, and beyond that finite wherever the float64 oracle (rounded to
the output dtype) is finite, never NaN. Runtime: ~12 s.
"""

import cuda_emulator as emu
import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, bands, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")

NAMES = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
# Logit magnitudes (exact in bf16 and fp16 inputs): ~1, 10, 100, 1e3, 1e4, then 1e6 .. 1e30.
MAGNITUDES = [1.0, 10.0, 100.0, 992.0, 9984.0, 2.0**20, 2.0**33, 2.0**66, 2.0**100]
# fp16 inputs stop at 65504: the magnitude is spread over several channels, up to 8 * 2^15.
MAGNITUDES_FP16 = [1.0, 10.0, 100.0, 992.0, 9984.0, 2.0**16, 2.0**18]
FP16_MAX_INPUT = 2.0**15
# Above this the O(1) spread would not be exact in fp32 (ulp(2^20) = 1/8): the logits of a row are
# then all equal.
RESOLVABLE = 2.0**20
N, HQ, HKV, D, W1, W2 = 12, 2, 1, 16, 4, 3


def _dyadic(gen, shape, values):
    idx = torch.randint(0, len(values), shape, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
    return torch.tensor(values, dtype=torch.float64)[idx] * sign


def _inputs(dtype, magnitudes, seed=0, hq=HQ, hkv=HKV):
    """Batch element b has logits magnitudes[b] + an O(1) dyadic spread: the magnitude rides on the
    first channel(s) (q = L / m, k1 = k2 = 1), the spread on the others (q, k1, k2 in {+-1, +-1/2},
    products multiples of 1/8), so every partial sum of every logit is exact in fp32."""
    gen = torch.Generator().manual_seed(seed)
    B = len(magnitudes)
    q = _dyadic(gen, (B, N, hq, D), [1.0, 0.5])
    k1, k2 = (_dyadic(gen, (B, N, hkv, D), [1.0, 0.5]) for _ in range(2))
    for b, mag in enumerate(magnitudes):
        m = 1
        while dtype == torch.float16 and mag / m > FP16_MAX_INPUT:
            m *= 2
        q[b, ..., :m] = mag / m
        k1[b, ..., :m] = k2[b, ..., :m] = 1.0
        if mag > RESOLVABLE:
            q[b, ..., m:] = 0.0
    v1, v2 = (torch.randn(B, N, hkv, D, generator=gen, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(B, N, hq, D, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k1, k2, v1, v2, dout)]


def _bound(dtype, magnitude):
    if magnitude <= 1e3:
        return BOUNDS[dtype]
    if magnitude <= 1e4:
        return max(2e-3, BOUNDS[dtype])
    return None  # finite only


@pytest.mark.parametrize("fast_math", [False, True], ids=["exact", "fast_math"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch.")
)
def test_logit_magnitude_sweep(dtype, fast_math):
    _sweep(dtype, fast_math, HQ, HKV)


@pytest.mark.parametrize("fast_math", [False, True], ids=["exact", "fast_math"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch."))
def test_logit_magnitude_sweep_without_gqa(dtype, fast_math):
    """Hq == Hkv: the backward's fused pass in sequence tiles (bwd_dqkv2_kernel.cuh), not dq + dkv2."""
    _sweep(dtype, fast_math, 1, 1)


def _sweep(dtype, fast_math, hq, hkv):
    magnitudes = MAGNITUDES_FP16 if dtype == torch.float16 else MAGNITUDES
    q, k1, k2, v1, v2, dout = _inputs(dtype, magnitudes, hq=hq, hkv=hkv)
    prob = Problem(*bands(W1, W2, True), 1.0)
    out, lse, lse_lo = emu.fused_fwd(q, k1, k2, v1, v2, prob, fast_math=fast_math)
    grads = emu.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob, fast_math=fast_math)
    ref = (*oracle_fwd(q, k1, k2, v1, v2, W1, W2, True, 1.0), *oracle_bwd(dout, q, k1, k2, v1, v2, W1, W2, True, 1.0))
    problems = []
    for name, got, want in zip(NAMES, (out, lse, *grads), ref, strict=True):
        out_dtype = torch.float32 if name == "lse" else dtype
        for b, mag in enumerate(magnitudes):
            g, r = got[b], want[b]
            if torch.isnan(g).any():
                problems.append(f"{name} at {mag:.3g}: NaN")
                continue
            hidden = ~torch.isfinite(g) & torch.isfinite(r.to(out_dtype))
            if hidden.any():
                problems.append(f"{name} at {mag:.3g}: {int(hidden.sum())} non-finite where the oracle is finite")
            bound = _bound(dtype, mag)
            if bound is not None and not rel_err(g, r) <= bound:
                problems.append(f"{name} at {mag:.3g}: relative error {rel_err(g, r):.2e} > {bound:.0e}")
    assert not problems, problems


@pytest.mark.parametrize("fast_math", [False, True], ids=["exact", "fast_math"])
@pytest.mark.parametrize(
    ("dtype", "q_value"),
    [(torch.float32, 1e10), (torch.bfloat16, 1e10), (torch.float32, 1e30), (torch.float16, 3e4)],
    ids=["float32-1e10", "bfloat16-1e10", "float32-1e30", "float16-3e4"],
)
def test_single_pair_at_a_huge_logit(dtype, q_value, fast_math):
    """w1 = w2 = 1 with unit k1, k2, v1, v2: each row has one pair of weight exactly 1, so out = 1,
    lse = the logit, dv1 = dv2 = dout = 1 and dq = dk1 = dk2 = 0 (dP = Delta), at any finite logit.
    (The AVX2 CPU kernel returned NaN here before issue 14.) The scale is no power of two and q
    differs per row, so the logit's rounding differs per row too: a backward whose recomputed
    exponent sees that rounding (a contracted fma) gets P = 0 on some row."""
    n, scale = 8, 0.3
    q = (q_value * (1 + torch.arange(n) / n)).view(1, n, 1, 1).expand(1, n, 1, 16).to(dtype).contiguous()
    ones = torch.ones_like(q)
    prob = Problem(*bands(1, 1, True), scale)
    out, lse, lse_lo = emu.fused_fwd(q, ones, ones, ones, ones, prob, fast_math=fast_math)
    grads = emu.fused_bwd(ones, q, ones, ones, ones, ones, out, lse, lse_lo, prob, fast_math=fast_math)
    dq, dk1, dk2, dv1, dv2 = grads
    logits = scale * 16 * q.double()[0, :, 0, 0]
    assert torch.equal(out, ones), out
    assert torch.allclose(lse.double()[0, 0], logits, rtol=1e-6, atol=0), lse
    for name, g in (("dv1", dv1), ("dv2", dv2)):
        assert torch.equal(g, ones), f"{name}: {g.unique()}"
    for name, g in (("dq", dq), ("dk1", dk1), ("dk2", dk2)):
        assert torch.equal(g, torch.zeros_like(g)), f"{name}: {g.unique()}"


def test_lse_lo_carries_the_rounding_of_lse():
    """lse_lo is the residual of lse = fl(m + ln l): at |logit| ~ 1e3 and 1e4 lse alone is off by up
    to half an ulp (3e-5, 5e-4), lse + lse_lo by the float32 rounding of ln l alone (a few 1e-7); a
    row with a NaN input has lse NaN and lse_lo 0 (README, "Numerics at large logits")."""
    q, k1, k2, v1, v2, _ = _inputs(torch.float32, [992.0, 9984.0])
    q[1, 5, 0, 3] = float("nan")  # every logit of query row 5 (head 0) of batch element 1
    prob = Problem(*bands(W1, W2, True), 1.0)
    _, lse, lse_lo = emu.fused_fwd(q, k1, k2, v1, v2, prob)
    _, ref = oracle_fwd(q, k1, k2, v1, v2, W1, W2, True, 1.0)
    finite = torch.isfinite(ref)
    assert torch.isnan(lse[1, 0, 5]) and lse_lo[1, 0, 5] == 0
    assert torch.isfinite(lse_lo).all()
    err_hi = (lse.double() - ref)[finite].abs()
    err_two = (lse.double() + lse_lo.double() - ref)[finite].abs()
    assert err_two.max() <= 2e-6, f"lse + lse_lo off by {err_two.max():.2e}"
    assert err_hi.max() > 4 * err_two.max(), "the probe must be one where lse alone is visibly rounded"
