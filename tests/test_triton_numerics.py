"""The softmax numerics rule (issue 14) in the Triton kernels: large finite logits, the parts
tests/test_large_logits.py (every backend, float32 and bfloat16 through the interpreter) does
not run here: float16, and inexact logits at 1e10 .. 1e30.

Exact logits (dyadic inputs, scale = 1): a common offset M (q[..., 0] = M against k1[..., 0] =
k2[..., 0] = 1) plus an O(1) spread from small dyadic channels, coarsened to a multiple of
ulp(M) where float32 cannot resolve O(1) at M. The only error left is then the softmax
handling, measured against the float64 oracle for out, lse and all five gradients. Through
the interpreter on CPU, on the compiled kernels on a GPU.
"""

import importlib.util
import math

import pytest
import torch

from simplicial_attn.problem import Problem

from cases import BOUNDS, Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    from simplicial_attn import triton_kernels as tk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASE = Case(1, 6, 2, 1, 16, 3, 2)
OUTPUTS = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
# Largest offset per dtype: 1e30 where the dtype holds it, else a power of two whose k
# gradients (~M) stay finite in float16.
# float16 inputs hold at most 65504 and its k gradients grow like M: up to 2^12.
FP16_MAGNITUDES = (1.0, 2.0**6, 2.0**10, 2.0**12)


def _exact_inputs(case, dtype, magnitude, seed=0):
    """q, k1, k2, v1, v2 whose logits are M + spread exactly (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    m = 2.0 ** math.floor(math.log2(magnitude))
    # q's spread channels hold {-1/4, -1/8, 1/8, 1/4} * unit, k1's and k2's {-1, -1/2, 1/2, 1}:
    # every product is a multiple of unit / 32, which must be one of ulp(M) (in the float32
    # accumulator) for M + spread to be exact.
    unit = max(1.0, 32 * m * 2.0**-23)

    def dyadic(shape):
        return torch.tensor([-1.0, -0.5, 0.5, 1.0])[torch.randint(0, 4, shape, generator=g)]

    q_shape, kv_shape = (case.B, case.N, case.Hq, case.D), (case.B, case.N, case.Hkv, case.D)
    q = dyadic(q_shape) * unit / 4
    k1, k2 = dyadic(kv_shape), dyadic(kv_shape)
    q[..., 0], k1[..., 0], k2[..., 0] = m, 1.0, 1.0
    v1, v2 = (torch.randn(kv_shape, generator=g) for _ in range(2))
    return tuple(t.to(DEVICE, dtype) for t in (q, k1, k2, v1, v2))


def _errors(case, dtype, magnitude, inputs=None):
    inputs = _exact_inputs(case, dtype, magnitude) if inputs is None else inputs
    dout = make_dout(case, dtype, DEVICE)
    prob = Problem(*bands(case.w1, case.w2, case.causal), 1.0)
    out, lse, lse_lo = tk.fwd(*inputs, prob)
    grads = tk.bwd(dout, *inputs, out, lse, lse_lo, prob)
    ref = oracle_fwd(*inputs, case.w1, case.w2, case.causal, 1.0)
    ref += oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, 1.0)
    errs, hidden = {}, {}
    for name, x, r in zip(OUTPUTS, (out, lse, *grads), ref, strict=True):
        x = x.detach().double().cpu()
        r_in_dtype = r.to(torch.float32 if name == "lse" else dtype).double().cpu()
        bad = ~torch.isfinite(x) & torch.isfinite(r_in_dtype)
        if bad.any() or x.isnan().any():
            hidden[name] = int(bad.sum()) + int(x.isnan().sum())
        errs[name] = rel_err(x, r)
    return errs, hidden


def test_float16_large_logits_stay_accurate_and_finite(poison):
    """Within CONTRACT §5 up to |logit| = 2^10, finite and never NaN beyond."""
    report = {}
    for magnitude in FP16_MAGNITUDES:
        errs, hidden = _errors(CASE, torch.float16, magnitude)
        bound = BOUNDS[torch.float16] if magnitude <= 2.0**10 else math.inf
        over = {k: f"{v:.2e}" for k, v in errs.items() if not v <= bound}
        if over or hidden:
            report[magnitude] = dict(over=over, bound=bound, non_finite=hidden)
    assert not report, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_inexact_logits_stay_finite(dtype, poison):
    """Random inputs at |logit| ~ 1e10 .. 1e30: the backward's recomputed logits differ from
    the forward's by rounding (ulp(1e10) = 1024 in float32), which without the clamp at 0 gave
    P = exp(~1e3) = inf. Every output must be finite where the oracle is, and never NaN."""
    case = Case(1, 9, 2, 2, 16, 4, 3)
    report = {}
    for magnitude in (1e10, 1e20, 1e30):
        inputs = list(make_inputs(case, dtype, DEVICE))
        inputs[0] = (inputs[0].float() * magnitude / 4).to(dtype)
        _, hidden = _errors(case, dtype, magnitude, inputs)
        if hidden:
            report[magnitude] = hidden
    assert not report, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_recomputed_logits_above_lse_stay_finite(dtype, poison):
    """Every backward kernel clamps P = exp(z - lse) at 1 (softmax.recomputed_p). On a GPU a
    recomputed logit can round above the forward's (other tiles, another summation order); the
    interpreter recomputes the forward's products exactly, so the test lowers lse by 1000 (1000
    natural units above it, exp would overflow float32) and asks for finite gradients."""
    case = Case(1, 9, 2, 2, 16, 4, 3)
    inputs = make_inputs(case, dtype, DEVICE)
    dout = make_dout(case, dtype, DEVICE)
    prob = Problem(*bands(case.w1, case.w2, case.causal), case.D**-0.5)
    out, lse, lse_lo = tk.fwd(*inputs, prob)
    grads = tk.bwd(dout, *inputs, out, lse - 1000.0, lse_lo, prob)
    for name, g in zip(OUTPUTS[2:], grads, strict=True):
        assert torch.isfinite(g).all(), name
