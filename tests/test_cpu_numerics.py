"""The C++ CPU kernels at large logits (issue 14, items 1 and 2), on every instruction-set flavour.

The softmax rule of the kernels (numerics of issue 14): exponents are formed in natural units by
subtracting first (`2^((z - m) log2 e)`, never `fma(z, log2 e, -m log2 e)`, whose rounding of
`m log2 e` goes straight into the exponent); the forward saves lse and its rounding residual
lse_lo; the backward's recomputed `P = 2^(min((z - lse) - lse_lo, 0) log2 e)` is clamped at 1
with NaN kept. Before that rule the AVX2 kernels returned NaN at q = 1e10 and a dv1
of 1.015 at 1e6 where the answer is 1.
"""

import pytest
import torch

from simplicial_attn.backends import extension
from simplicial_attn.problem import Problem

from cases import Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

if not extension.has_kernel("cpu"):
    pytest.skip(
        f"the C++ extension simplicial_attn._C with CPU kernels is not built ({extension.build_info()})",
        allow_module_level=True,
    )

ops = torch.ops.simplicial_attn
ISA_ENV = "SIMPLICIAL_ATTN_CPU_ISA"
NAMES = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")


def _isas():
    cap = torch.backends.cpu.get_cpu_capability()
    return ["base"] + (["avx2"] if cap in ("AVX2", "AVX512") else []) + (["avx512"] if cap == "AVX512" else [])


ISAS = _isas()


def _run(q, k1, k2, v1, v2, dout, w1, w2, scale, causal=True):
    prob = Problem(*bands(w1, w2, causal), scale).fused_args()
    out, lse, lse_lo = ops.fused_fwd(q, k1, k2, v1, v2, *prob)
    return (out, lse, *ops.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("logit", [1e4, 1e6, 1e8, 1e10, 1e30])
def test_single_pair_is_exact(isa, logit, monkeypatch):
    """One pair (w1 = w2 = 1) of weight exactly 1: out = v1 * v2 = 1, lse = the logit, dv1 = dout * v2 = 1."""
    monkeypatch.setenv(ISA_ENV, isa)
    q = torch.zeros(1, 1, 1, 16)
    q[..., 0] = logit
    k = torch.zeros(1, 1, 1, 16)
    k[..., 0] = 1.0
    v = torch.ones(1, 1, 1, 16)
    out, lse, dq, dk1, dk2, dv1, dv2 = _run(q, k, k, v, v, torch.ones_like(q), 1, 1, 1.0)
    assert torch.equal(out, v), f"out {out.flatten()[:4].tolist()} at logit {logit:g}"
    assert lse.item() == torch.tensor(logit).item()
    assert torch.equal(dv1, v) and torch.equal(dv2, v), f"dv1 {dv1.flatten()[:4].tolist()} at logit {logit:g}"
    for name, g in (("dq", dq), ("dk1", dk1), ("dk2", dk2)):  # P = 1: dA = P (dP - Delta) = 0
        assert torch.equal(g, torch.zeros_like(g)), f"{name} {g.flatten()[:4].tolist()} at logit {logit:g}"


CASE = Case(2, 37, 4, 2, 16, 9, 5)


def _offset_inputs(offset, seed):
    """Logits offset + O(1) that float32 holds exactly (scale 1): channel 0 carries the offset
    (q = offset, k1 = k2 = 1), the others are small dyadic numbers (multiples of 1/8 below 1)
    whose products and sums need few bits, so the only error left is the softmax's."""
    q, k1, k2, v1, v2 = make_inputs(CASE, torch.float32, seed=seed)
    q, k1, k2 = ((t.clamp(-1, 1) * 8).round() / 8 for t in (q, k1, k2))
    q[..., 0], k1[..., 0], k2[..., 0] = offset, 1.0, 1.0
    return q, k1, k2, v1, v2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_large_offset_logits_match_oracle(isa, offset, poison, monkeypatch):
    monkeypatch.setenv(ISA_ENV, isa)
    inputs = _offset_inputs(offset, seed=20)
    dout = make_dout(CASE, seed=21)
    got = _run(*inputs, dout, CASE.w1, CASE.w2, 1.0)
    ref = (*oracle_fwd(*inputs, CASE.w1, CASE.w2, True, 1.0), *oracle_bwd(dout, *inputs, CASE.w1, CASE.w2, True, 1.0))
    # The issue asks for 2e-3 up to 1e4; with lse_lo the kernels keep the CONTRACT's float32 bound
    # (measured ~2e-7), which this holds. lse alone would miss it from ~1e3 (ulp(lse) / 2 enters
    # every P of the row: 1.7e-5 at 1e3, 3e-4 at 1e4).
    for name, x, r in zip(NAMES, got, ref, strict=True):
        assert not x.isnan().any(), f"{name} has NaN at logit offset {offset:g}"
        err = rel_err(x, r)
        assert err <= 1e-5, f"{name}: relative error {err:.2e} at logit offset {offset:g}"


@pytest.mark.parametrize("isa", ISAS)
def test_randomly_scaled_inputs_stay_finite(isa, poison, monkeypatch):
    """q * 1e4 on random inputs (the issue's repro: NaN in about half the rows before). The softmax
    is then one-hot per row, so out, lse, dv1, dv2 are well-conditioned and held to 2e-3; the
    q/k gradients vanish in that limit (the oracle's are ~1e-300), so they are checked finite."""
    monkeypatch.setenv(ISA_ENV, isa)
    q, k1, k2, v1, v2 = make_inputs(CASE, torch.float32, seed=22)
    q = q * 1e4
    dout = make_dout(CASE, seed=23)
    got = _run(q, k1, k2, v1, v2, dout, CASE.w1, CASE.w2, 0.25)
    ref = (
        *oracle_fwd(q, k1, k2, v1, v2, CASE.w1, CASE.w2, True, 0.25),
        *oracle_bwd(dout, q, k1, k2, v1, v2, CASE.w1, CASE.w2, True, 0.25),
    )
    for name, x, r in zip(NAMES, got, ref, strict=True):
        assert torch.isfinite(x).all(), f"{name} is not finite at q * 1e4"
        if name in ("out", "lse", "dv1", "dv2"):
            err = rel_err(x, r)
            assert err <= 2e-3, f"{name}: relative error {err:.2e} at q * 1e4"
