"""Determinant ("volume") logits (CONTRACT §8) on every backend.

The oracle (tests/oracle.py) computes each logit as the triple product q . (k1 x k2) of every
3-channel chunk with torch.linalg.cross, independently of the package's channel-permutation
form. Besides parity (out, lse, all gradients; D = 12, 24, 48, 96, 192): one rotation in SO(3)
per chunk, applied to q, k1 and k2 alike, leaves the output unchanged; float64 gradcheck; the
scores ops; and D % 3 != 0 is refused naming `logits` by every entry point.
"""

import pytest
import torch

import simplicial_attn as sa

from cases import BOUNDS, HAS_GPU, Case, backend_params, device_of, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

GRADS = ("dq", "dk1", "dk2", "dv1", "dv2")

DET_CASES = [
    Case(1, 1, 1, 1, 12, 4, 4),
    Case(2, 7, 2, 1, 12, 3, 5),
    Case(1, 9, 4, 2, 24, 16, 16),  # windows larger than N
    Case(2, 17, 8, 1, 48, 1, 4),  # w1 = 1, GQA 8
    Case(1, 33, 2, 2, 24, 5, 40),  # w2 > 32 (the swapped-window path negates the determinant)
    Case(2, 20, 4, 4, 96, 6, 3),
    Case(1, 13, 2, 1, 192, 7, 4),  # D = 192 (padded head dims)
    Case(1, 11, 4, 2, 48, 8, None, causal=False),
    Case(1, 9, 2, 1, 12, None, None, causal=False),
]
INTERP_CASES = [DET_CASES[i] for i in (1, 3, 4, 7)]


def _cases():
    for backend in backend_params():
        name = backend.values[0]
        for case in DET_CASES:
            marks = list(backend.marks)
            if name == "triton" and case not in INTERP_CASES:
                marks.append(pytest.mark.skipif(not HAS_GPU, reason="interpreter: a subset of the grid"))
            yield pytest.param(name, case, marks=marks, id=f"{name}-{case.id}")


def _run(backend, case, dtype, inputs=None):
    dev = device_of(backend)
    inputs = make_inputs(case, dtype, dev, requires_grad=True) if inputs is None else inputs
    out, lse = sa.two_simplicial_attention(
        *inputs, case.w1, case.w2, causal=case.causal, logits="determinant", return_lse=True, backend=backend
    )
    dout = make_dout(case, dtype, dev)
    return inputs, dout, out, lse, torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("backend, case", list(_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_determinant_matches_the_oracle(backend, case, dtype, poison):
    if dtype == torch.bfloat16 and backend == "triton" and not HAS_GPU and case != INTERP_CASES[0]:
        pytest.skip("interpreter: bf16 on one case")
    inputs, dout, out, lse, grads = _run(backend, case, dtype)
    scale = case.D**-0.5
    ref_out, ref_lse = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale, "determinant")
    ref_grads = oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale, "determinant")
    errs = {"out": rel_err(out, ref_out), "lse": rel_err(lse, ref_lse)}
    for name, g, r in zip(GRADS, grads, ref_grads, strict=True):
        errs[name] = rel_err(g, r) if r.norm() > 0 else g.double().abs().max().item()  # N = 1: zero q/k grads
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= BOUNDS[dtype]}
    assert not bad, f"{backend} {case.id} {dtype}: over {BOUNDS[dtype]}: {bad}"


def _chunk_rotations(D, seed):
    """A random rotation in SO(3) per 3-channel chunk, as one block-diagonal [D, D] matrix."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(D // 3):
        Q, R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(R))
        if torch.det(Q) < 0:
            Q[:, 0] = -Q[:, 0]
        blocks.append(Q)
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("backend", backend_params())
def test_one_rotation_per_chunk_leaves_the_output_unchanged(backend):
    """det(R q, R k1, R k2) = det(R) det(q, k1, k2) = det(q, k1, k2) for R in SO(3), per chunk."""
    case = Case(2, 9, 4, 2, 24, 5, 3)
    dev = device_of(backend)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32, dev, seed=4)
    R = _chunk_rotations(case.D, seed=5).float().to(dev)
    rotated = [t @ R.T for t in (q, k1, k2)]
    base = sa.two_simplicial_attention(q, k1, k2, v1, v2, 5, 3, logits="determinant", backend=backend)
    turned = sa.two_simplicial_attention(*rotated, v1, v2, 5, 3, logits="determinant", backend=backend)
    assert rel_err(turned, base) <= 1e-5
    trilinear = sa.two_simplicial_attention(*rotated, v1, v2, 5, 3, backend=backend)
    assert rel_err(trilinear, sa.two_simplicial_attention(q, k1, k2, v1, v2, 5, 3, backend=backend)) > 1e-2


@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_gradcheck_float64(backend):
    case = Case(1, 5, 2, 1, 6, 3, 2)
    inputs = make_inputs(case, torch.float64, requires_grad=True)

    def f(*x):
        return sa.two_simplicial_attention(*x, 3, 2, logits="determinant", backend=backend)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", backend_params())
def test_scores_and_weights_match_the_oracle(backend):
    """trilinear_scores / attention_weights with logits='determinant', and the identity that
    contracting the weights with v1 (x) v2 gives the fused output."""
    case = Case(1, 7, 2, 1, 12, 3, 4)
    dev = device_of(backend)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32, dev, seed=7, requires_grad=True)
    scores = sa.trilinear_scores(q, k1, k2, 3, 4, logits="determinant", backend=backend)
    i = torch.arange(case.N)
    j = (i[:, None] - 3 + 1 + torch.arange(3))[:, :, None]
    k = (i[:, None] - 4 + 1 + torch.arange(4))[:, None, :]
    c = lambda t: t.detach().double().cpu()[0, :, 0].reshape(case.N, 4, 3)  # noqa: E731  (kv head 0)
    qd = q.detach().double().cpu()[0].reshape(case.N, 2, 4, 3)
    cross = torch.linalg.cross(c(k1)[j.clamp(min=0)], c(k2)[k.clamp(min=0)], dim=-1)  # [N, 3, 4, 4, 3]
    ref = case.D**-0.5 * torch.einsum("nhmc,nabmc->nhab", qd, cross).permute(1, 0, 2, 3)
    valid = ((j >= 0) & (k >= 0)).expand(-1, 3, 4)
    got = scores[0].double().cpu()
    assert torch.equal(torch.isinf(got), ~valid.expand(2, -1, -1, -1))
    assert rel_err(got[:, valid], ref[:, valid]) <= BOUNDS[torch.float32]
    weights = sa.attention_weights(q, k1, k2, 3, 4, logits="determinant", backend=backend)
    pairs = v1[0, j.clamp(min=0).squeeze(-1), 0][:, :, None] * v2[0, k.clamp(min=0).squeeze(1), 0][:, None, :]
    contracted = torch.einsum("hnab,nabd->nhd", weights[0], pairs)
    fused = sa.two_simplicial_attention(q, k1, k2, v1, v2, 3, 4, logits="determinant", backend=backend)
    assert rel_err(contracted, fused[0]) <= 1e-5
    grad = torch.autograd.grad(scores[torch.isfinite(scores)].sum(), (q, k1, k2))
    assert all(torch.isfinite(g).all() for g in grad)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: sa.two_simplicial_attention(*x, 3, 2, logits="determinant"),
        lambda x: sa.two_simplicial_attention_varlen(
            *(t[0] for t in x), torch.tensor([0, 5], dtype=torch.int32), None, 3, 2, logits="determinant"
        ),
        lambda x: sa.trilinear_scores(*x[:3], 3, 2, logits="determinant"),
        lambda x: sa.two_simplicial_attention_with_kvcache(
            x[0], *x[1:], torch.zeros(1, dtype=torch.int32), w1=3, w2=2, logits="determinant"
        ),
    ],
    ids=["fused", "varlen", "scores", "kvcache"],
)
def test_head_dim_not_divisible_by_3_names_logits(call):
    x = make_inputs(Case(1, 5, 2, 1, 32, 3, 2), torch.float32)
    with pytest.raises(ValueError, match=r"logits='determinant' needs a head dim divisible by 3 .*got D = 32"):
        call(x)


def test_unknown_logits_is_an_error():
    x = make_inputs(Case(1, 5, 2, 1, 12, 3, 2), torch.float32)
    with pytest.raises(ValueError, match=r"logits must be one of trilinear, determinant; got 'volume'"):
        sa.two_simplicial_attention(*x, 3, 2, logits="volume")
    with pytest.raises(TypeError, match=r"logits must be a str"):
        sa.two_simplicial_attention(*x, 3, 2, logits=1)
