"""The CUDA C++ kernels, run on the CPU emulator, against the float64 oracle.

No GPU is needed: tests/cuda_emulator.py compiles csrc/cuda with -DSA_EMULATE, which runs the
kernels' own code (launchers, index arithmetic, mma/ldmatrix fragment layouts, cp.async
pipeline, barriers) with each CTA's threads as fibers and fails on any out-of-bounds access,
shared-memory race, uninitialised shared read, barrier mismatch or doubly-written output. So a
pass here means the kernels compute the CONTRACT and are memory-safe for these shapes; it says
nothing about speed or hardware rounding (tests/test_cuda_kernels.py runs them on a GPU).

Runtime on 2 cores: ~60 s to compile the emulator once (cached per source state), then
~1-4 s per case and dtype. The default selection takes about 2 minutes in all;
SIMPLICIAL_ATTN_EMULATE_FULL=1 adds the whole shared case grid (~4 more minutes).
"""

import os

import cuda_emulator as emu
import pytest
import torch

from simplicial_attn._windows import kernel_window

from cases import BOUNDS, CASES_FULL, CASES_SMALL, Case, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")

DTYPES = [torch.float16, torch.bfloat16, torch.float32]

# Beyond the shared grid: the paths the kernels choose at runtime.
SPECIAL = [
    Case(1, 5, 32, 2, 24, 3, 2),  # head packing (16 query heads per kv head), D % 8 == 0
    Case(1, 6, 17, 1, 20, 4, 6, causal=False),  # head packing, odd group, D % 8 != 0: scalar loads
    Case(1, 9, 1, 1, 200, 5, 4),  # D = 200: padded to 256, output columns split over 2 CTAs
    Case(1, 97, 2, 1, 64, 40, 20),  # several k1/v1 blocks and offset chunks: the cp.async pipeline
]
FULL = os.environ.get("SIMPLICIAL_ATTN_EMULATE_FULL", "0") == "1"
CASES = SPECIAL + (CASES_FULL if FULL else CASES_SMALL)


def _windows(case):
    return kernel_window(case.w1, case.N, case.causal), kernel_window(case.w2, case.N, case.causal)


def _check(name, got, ref, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN (an element no kernel wrote keeps the driver's NaN poison)"
    err = rel_err(got, ref)
    assert err <= BOUNDS[dtype], f"{name}: relative error {err:.2e} > {BOUNDS[dtype]:.0e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fwd_bwd_match_oracle(case, dtype):
    q, k1, k2, v1, v2 = make_inputs(case, dtype)
    dout = make_dout(case, dtype)
    w1, w2 = _windows(case)
    scale = case.D**-0.5
    out, lse = emu.fwd(q, k1, k2, v1, v2, w1, w2, case.causal, scale)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale)
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)
    grads = emu.bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, case.causal, scale)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale)
    for name, g, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, refs, strict=True):
        _check(name, g, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d).removeprefix("torch."))
def test_strided_inputs(dtype):
    """Inputs that are views with padded rows and a [B, H, N, D] memory order: the kernels take the
    strides as given (64-bit), no copy."""
    case = Case(2, 13, 4, 2, 64, 5, 3)
    q, k1, k2, v1, v2 = make_inputs(case, dtype)

    def restride(t):
        B, N, H, D = t.shape
        base = torch.full((B, H, N, D + 8), float("nan"), dtype=dtype)  # padding never read
        base[..., :D] = t.permute(0, 2, 1, 3)
        return base[..., :D].permute(0, 2, 1, 3)

    views = [restride(t) for t in (q, k1, k2, v1, v2)]
    assert not views[0].is_contiguous()
    w1, w2 = _windows(case)
    out, lse = emu.fwd(*views, w1, w2, case.causal, 0.3)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.3)
    _check("out", out, ref_out, dtype)
    _check("lse", lse, ref_lse, dtype)
    dout = make_dout(case, dtype)
    grads = emu.bwd(restride(dout), *views, restride(out), lse, w1, w2, case.causal, 0.3)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.3)
    for name, g, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, refs, strict=True):
        _check(name, g, r, dtype)


def test_lse_is_natural_log():
    """lse is ln(sum exp(logits)): one row by hand."""
    case = Case(1, 3, 1, 1, 16, 2, 2)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32)
    _, lse = emu.fwd(q, k1, k2, v1, v2, 2, 2, True, 0.5)
    i = 2
    logits = [
        0.5 * (q[0, i, 0] * k1[0, j, 0] * k2[0, k, 0]).sum().double() for j in (1, 2) for k in (1, 2)
    ]  # causal w = 2: j, k in {1, 2}
    assert abs(lse[0, 0, i].item() - torch.logsumexp(torch.stack(logits), 0).item()) < 1e-5
