"""Large finite logits (CONTRACT §4, issue 14) on every backend, forward and all five gradients.

The inputs are built so that every backend computes every logit EXACTLY (scale = 1; dyadic
values; q's channel 0 carries the magnitude L = 2^e against k1 = k2 = 1 there, the other channels
a spread of small multiples of a unit u that float32 resolves at L): what is left to test is the
softmax's handling of the magnitude, the bug this file exists for (an exponent computed as
fma(z, log2e, -m * log2e) turns q = 1e10 into NaN and drifts by percents at 1e6).

    |logit| <= 2^10 (~1e3)   CONTRACT §5 bounds
    |logit| <= 2^13 (~1e4)   2e-3 in float32 (issue 14's bound; exact logits let kernels do far better)
    beyond                   finite wherever the float64 oracle (rounded to the dtype) is finite, never NaN
"""

import pytest
import torch

import simplicial_attn as sa

from cases import BOUNDS, HAS_GPU, backend_params, device_of, rel_err
from oracle import oracle_bwd, oracle_fwd

NAMES = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
EXPONENTS = (0, 5, 9, 10, 13, 14, 20, 30, 60, 100)  # L = 2^e: 1 .. 1.3e30
INTERP_EXPONENTS = (10, 13, 30, 100)  # the interpreter (~1-2 s a call) runs a subset
FP16_MAX_EXPONENT = 15  # float16 inputs hold at most 65504
B, N, HQ, HKV, D, W1, W2 = 1, 11, 2, 1, 16, 4, 3


def exact_inputs(e, sign, dtype, device):
    """q, k1, k2, v1, v2, dout with logits sign * 2^e + (a spread of multiples of u), all exact."""
    L = 2.0**e
    u = max(2.0**-3, L * 2.0**-20)  # L / u <= 2^20: sums of these terms stay exact in float32
    g = torch.Generator().manual_seed(e * 2 + (sign > 0))
    choice = torch.tensor([-2.0, -1.0, 1.0, 2.0])

    def dyadic(*shape):
        return choice[torch.randint(0, 4, shape, generator=g)]

    q = u * dyadic(B, N, HQ, D)
    k1, k2 = dyadic(B, N, HKV, D), dyadic(B, N, HKV, D)
    q[..., 0], k1[..., 0], k2[..., 0] = sign * L, 1.0, 1.0
    v1, v2, dout = torch.randn(B, N, HKV, D, generator=g), torch.randn(B, N, HKV, D, generator=g), None
    dout = torch.randn(B, N, HQ, D, generator=g)
    return [t.to(device, dtype) for t in (q, k1, k2, v1, v2, dout)]


def _bound(e, dtype):
    if e <= 10:
        return BOUNDS[dtype]
    if e <= 13:
        return max(2e-3, BOUNDS[dtype])
    return None


def _cases():
    for backend in backend_params():
        name = backend.values[0]
        interp = name == "triton" and not HAS_GPU
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            if interp and dtype == torch.float16:
                continue
            for e in INTERP_EXPONENTS if interp else EXPONENTS:
                if dtype == torch.float16 and e > FP16_MAX_EXPONENT:
                    continue
                for sign in (1,) if interp else (1, -1):
                    yield pytest.param(name, dtype, e, sign, marks=backend.marks,
                                       id=f"{name}-{str(dtype)[6:]}-2^{e}-{'+' if sign > 0 else '-'}")  # fmt: skip


@pytest.mark.parametrize("backend, dtype, e, sign", list(_cases()))
def test_logit_magnitude_sweep(backend, dtype, e, sign, poison):
    q, k1, k2, v1, v2, dout = exact_inputs(e, sign, dtype, device_of(backend))
    leaves = [t.clone().requires_grad_() for t in (q, k1, k2, v1, v2)]
    out, lse = sa.two_simplicial_attention(*leaves, W1, W2, scale=1.0, return_lse=True, backend=backend)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, W1, W2, True, 1.0)
    ref_grads = oracle_bwd(dout, q, k1, k2, v1, v2, W1, W2, True, 1.0)
    got = dict(zip(NAMES, (out, lse, *grads), strict=True))
    ref = dict(zip(NAMES, (ref_out, ref_lse, *ref_grads), strict=True))
    assert abs(ref_lse).max() >= 2.0**e / 2, "the inputs must reach the magnitude under test"
    for name in NAMES:
        assert not got[name].isnan().any(), f"{name}: NaN at |logit| ~ 2^{e}"
        representable = ref[name].to(torch.float32 if name == "lse" else dtype).isfinite().cpu()
        assert got[name].isfinite().cpu()[representable].all(), f"{name}: not finite where the oracle is, 2^{e}"
    bound = _bound(e, dtype)
    if bound is not None:
        errs = {n: rel_err(got[n], ref[n]) for n in NAMES}
        bad = {n: f"{v:.2e}" for n, v in errs.items() if not v <= bound}
        assert not bad, f"{backend} {dtype} |logit| ~ 2^{e}: over {bound}: {bad}"


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_pair_at_1e10(backend, dtype):
    """q = 1e10 against unit keys and values with w1 = w2 = 1: one pair of weight exactly 1, so
    out = 1, lse = the logit and dv1 = dout * v2 = 1, however large the logit."""
    dev = device_of(backend)
    q = torch.full((1, 4, 1, 16), 1e10, device=dev, dtype=dtype, requires_grad=True)
    k1, k2, v1, v2 = (torch.ones(1, 4, 1, 16, device=dev, dtype=dtype, requires_grad=True) for _ in range(4))
    out, lse = sa.two_simplicial_attention(q, k1, k2, v1, v2, 1, 1, return_lse=True, backend=backend)
    dv1 = torch.autograd.grad(out, v1, torch.ones_like(out))[0]
    logit = 16 * 16**-0.5 * q[0, 0, 0, 0].double().item()
    assert torch.equal(out, torch.ones_like(out)), out
    assert torch.allclose(lse.double(), torch.full_like(lse, logit, dtype=torch.float64), rtol=1e-6)
    assert torch.equal(dv1, torch.ones_like(dv1)), dv1
