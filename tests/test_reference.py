"""The reference backend against the dense float64 oracle, through the public op."""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.backends import reference

from cases import BOUNDS, CASES_FULL, Case, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def run_op(case, dtype, backend, device="cpu", seed=0):
    """Forward + backward through the public op; returns (out, lse, grads, inputs, dout)."""
    inputs = make_inputs(case, dtype, device, seed=seed, requires_grad=True)
    out, lse = sa.two_simplicial_attention(
        *inputs, w1=case.w1, w2=case.w2, causal=case.causal, return_lse=True, backend=backend
    )
    dout = make_dout(case, dtype, device)
    grads = torch.autograd.grad(out, inputs, dout)
    return out, lse, grads, inputs, dout


def check_against_oracle(case, dtype, backend, device="cpu", bound=None):
    bound = BOUNDS[dtype] if bound is None else bound
    out, lse, grads, inputs, dout = run_op(case, dtype, backend, device)
    ref_out, ref_lse = oracle_fwd(*inputs, case.w1, case.w2, case.causal)
    ref_grads = oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal)
    assert out.dtype == dtype and out.shape == inputs[0].shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    errors = {"out": rel_err(out, ref_out), "lse": rel_err(lse, ref_lse)}
    for name, g, ref in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, ref_grads, strict=True):
        assert g.dtype == dtype and g.shape == ref.shape, name
        errors[name] = rel_err(g, ref)
    bad = {k: v for k, v in errors.items() if not v <= bound}
    assert not bad, f"{case.id} {dtype}: errors over {bound:g}: {bad}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES_FULL, ids=lambda c: c.id)
def test_reference_matches_oracle(case, dtype, poison):
    check_against_oracle(case, dtype, "reference")


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_paths_match_oracle(monkeypatch, causal, poison):
    """Tiny chunk budget: many query blocks and k1-window chunks per block, ragged at both ends."""
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 700)
    check_against_oracle(Case(2, 29, 4, 2, 16, 11, 6, causal), torch.float64, "reference")


def test_plan_bounds_the_chunk():
    for B, N, Hq, D, w1, w2 in [(1, 4096, 4, 64, 512, 32), (2, 16384, 64, 128, 512, 32), (1, 9, 2, 16, 9, 9)]:
        bq, cj = reference._plan(B, N, Hq, D, w1, w2)
        assert 1 <= bq <= N and 1 <= cj <= w1
        assert B * Hq * bq * cj * max(w2, D) <= max(reference.CHUNK_ELEMENTS, B * Hq * max(w2, D))


def test_single_pair_window():
    """w1 = w2 = 1: each query sees only (i, i), so out = v1 * v2 and q/k get no gradient."""
    case = Case(2, 9, 4, 2, 16, 1, 1)
    out, lse, grads, (q, k1, k2, v1, v2), dout = run_op(case, torch.float64, "reference")
    g = q.shape[2] // k1.shape[2]
    expect = (v1 * v2).repeat_interleave(g, dim=2)
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
    logit = (q * (k1 * k2).repeat_interleave(g, dim=2)).sum(-1) * 16**-0.5
    torch.testing.assert_close(lse, logit.transpose(1, 2), rtol=0, atol=1e-12)
    for grad in grads[:3]:
        assert grad.abs().max() < 1e-12
    dv1 = (dout * v2.repeat_interleave(g, dim=2)).unflatten(2, (-1, g)).sum(3)
    torch.testing.assert_close(grads[3], dv1, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES_FULL[:8], ids=lambda c: c.id)
def test_reference_on_cuda(case):
    check_against_oracle(case, torch.float32, "reference", device="cuda")
