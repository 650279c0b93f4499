"""The unfused path: trilinear_scores, windowed_softmax and attention_weights on every backend.

Parity is against a dense float64 oracle written here (the whole (i, j, k) cube, gathered into
the window layout); gradients against autograd through it. Outputs are poisoned (NaN) before
every kernel call. Triton runs through the interpreter without a GPU (tests/conftest.py);
"cuda" tests are marked gpu and skipped without one.
"""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn import backends
from simplicial_attn.analysis import scores as scores_mod
from simplicial_attn.analysis.scores import attention_weights, trilinear_scores, windowed_softmax
from simplicial_attn.backends import BackendNotSupported

from cases import BOUNDS, CASES_FULL, CASES_SMALL, Case, make_inputs, rel_err

HAS_GPU = torch.cuda.is_available()
NEG_INF = float("-inf")


def _available(name):
    return not scores_mod.not_supported_reasons(name, "cuda" if name == "cuda" else "cpu", torch.float32)


def _backend_params():
    params = [pytest.param("reference")]
    params.append(
        pytest.param("cpu", marks=pytest.mark.skipif(not _available("cpu"), reason="C++ CPU kernels not built"))
    )
    triton_ok = HAS_GPU or _available("triton")
    params.append(
        pytest.param("triton", marks=pytest.mark.skipif(not triton_ok, reason="triton missing or not interpreting"))
    )
    params.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return params


BACKENDS = _backend_params()


def device_of(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and HAS_GPU) else "cpu"


def dtypes_of(backend):
    if backend in ("cuda", "triton"):
        return (torch.float32, torch.float16, torch.bfloat16)
    return (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# ---- the oracle -------------------------------------------------------------------------------


def oracle_slots(n, w, causal):
    """[N, W] key positions of every window slot and whether they are inside [0, N).

    The layout of CONTRACT §3: slot a of query i is j0(i) + a with j0(i) = i - w + 1 (causal)
    or i - w // 2 (centred); w = None: W = N with j0(i) = i - N + 1 (causal) or 0 (centred).
    """
    i = torch.arange(n)[:, None]
    if w is None:
        start = i - n + 1 if causal else torch.zeros_like(i)
        w = n
    else:
        start = i - w + 1 if causal else i - w // 2
    pos = start + torch.arange(w)[None, :]
    return pos, (pos >= 0) & (pos < n)


def _heads(x, hq):
    """[B, N, Hkv, D] -> [B, Hq, N, D] float64, each kv head repeated for its query heads."""
    return x.double().permute(0, 2, 1, 3).repeat_interleave(hq // x.shape[2], dim=1)


def oracle_scores(q, k1, k2, w1, w2, causal, scale=None):
    """Scores [B, Hq, N, W1, W2] in float64 from the dense cube; differentiable."""
    B, N, Hq, D = q.shape
    scale = D**-0.5 if scale is None else scale
    q, k1, k2 = (t.cpu() for t in (q, k1, k2))
    cube = scale * torch.einsum("bhid,bhjd,bhkd->bhijk", q.double().permute(0, 2, 1, 3), _heads(k1, Hq), _heads(k2, Hq))
    j, jv = oracle_slots(N, w1, causal)
    k, kv = oracle_slots(N, w2, causal)
    i = torch.arange(N)[:, None, None]
    gathered = cube[:, :, i, j.clamp(0, N - 1)[:, :, None], k.clamp(0, N - 1)[:, None, :]]
    return torch.where(jv[:, :, None] & kv[:, None, :], gathered, NEG_INF)


def oracle_softmax(scores):
    """float64 softmax over the last two dims; all -inf windows give zeros. Differentiable."""
    x = scores.double().flatten(-2)
    empty = (x == NEG_INF).all(-1, keepdim=True)
    p = torch.softmax(torch.where(empty, 0.0, x), -1)
    return torch.where(empty | (x == NEG_INF), 0.0, p).view(scores.shape)


def contract(p, v1, v2, w1, w2, causal):
    """out[b, i, h] = sum_{a,c} P[b,h,i,a,c] v1[j0(i)+a] * v2[k0(i)+c], in p's dtype."""
    B, Hq, N = p.shape[:3]
    Hkv = v1.shape[2]

    def window(v, w):
        pos, valid = oracle_slots(N, w, causal)
        pos, valid = pos.to(v.device), valid.to(v.device)
        g = v.to(p.dtype)[:, pos.clamp(0, N - 1)]  # [B, N, W, Hkv, D]
        g = torch.where(valid[None, :, :, None, None], g, 0)
        return g.repeat_interleave(Hq // Hkv, dim=3)  # [B, N, W, Hq, D]

    return torch.einsum("bhiac,biahd,bichd->bihd", p, window(v1, w1), window(v2, w2))


def _grad_seed(shape, mask, device, seed=3):
    """Random upstream gradient; NaN in the masked slots (they must be ignored)."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.where(mask, g, float("nan")).to(device)


def _score_bound(dtype):
    # Logits are float32 arithmetic on the (exactly represented) inputs whatever their dtype.
    return BOUNDS[torch.float64] if dtype == torch.float64 else BOUNDS[torch.float32]


# ---- trilinear_scores -----------------------------------------------------------------------


def _scores_grid(backend):
    cases = CASES_SMALL if backend == "triton" else CASES_FULL
    grid = [(c, torch.float32) for c in cases]
    extra = [d for d in dtypes_of(backend) if d != torch.float32]
    # Every other dtype on two small cases (B > 1 and GQA; centred with None): the dtype paths
    # are shared by all shapes.
    grid += [(c, d) for d in extra for c in (CASES_SMALL[0], CASES_SMALL[-2])]
    return grid


def _scores_params():
    params = []
    for bp in BACKENDS:
        name = bp.values[0]
        for case, dtype in _scores_grid(name):
            params.append(pytest.param(name, case, dtype, marks=bp.marks, id=f"{name}-{case.id}-{dtype}"))
    return params


@pytest.mark.parametrize("backend,case,dtype", _scores_params())
def test_scores_parity(backend, case, dtype, poison):
    dev = device_of(backend)
    q, k1, k2, _, _ = make_inputs(case, dtype, dev, requires_grad=True)
    s = trilinear_scores(q, k1, k2, case.w1, case.w2, causal=case.causal, backend=backend)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k1, k2)]
    ref = oracle_scores(*leaves, case.w1, case.w2, case.causal)
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert s.shape == ref.shape
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(s.cpu()), finite), "the -inf mask differs from the window layout"
    assert rel_err(s.cpu()[finite], ref[finite]) <= _score_bound(dtype)

    ds = _grad_seed(ref.shape, finite, dev)
    grads = torch.autograd.grad(s, (q, k1, k2), ds.to(s.dtype))
    ref_grads = torch.autograd.grad(ref, leaves, ds.cpu())
    for name, g, r, t in zip(("dq", "dk1", "dk2"), grads, ref_grads, (q, k1, k2), strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert rel_err(g, r) <= BOUNDS[dtype], f"{name}: {rel_err(g, r):.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_strided_inputs(backend, poison):
    """q, k1, k2 as [B, H, N, D]-major views (non-contiguous), and a non-contiguous gradient."""
    case = Case(2, 9, 4, 2, 16, 4, 3)
    dev = device_of(backend)
    q, k1, k2, _, _ = make_inputs(case, torch.float32, dev)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k1, k2)]
    assert not views[0].is_contiguous()
    s = trilinear_scores(*views, 4, 3, backend=backend)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k1, k2)]
    ref = oracle_scores(*leaves, 4, 3, True)
    finite = torch.isfinite(ref)
    assert rel_err(s.cpu()[finite], ref[finite]) <= BOUNDS[torch.float32]
    ds = _grad_seed(ref.shape[:-1] + (ref.shape[-1] * 2,), finite.repeat_interleave(2, -1), dev).float()[..., ::2]
    assert not ds.is_contiguous()
    grads = torch.autograd.grad(s, views, ds)
    for g, r in zip(grads, torch.autograd.grad(ref, leaves, ds.cpu()), strict=True):
        assert rel_err(g, r) <= BOUNDS[torch.float32]


# ---- windowed_softmax -----------------------------------------------------------------------


def _softmax_input(case, dtype, dev, seed=0):
    """Real window layouts (oracle scores, -inf where off the sequence), one window all -inf."""
    q, k1, k2, _, _ = make_inputs(case, torch.float64, seed=seed)
    s = oracle_scores(q, k1, k2, case.w1, case.w2, case.causal)
    s[0, 0, -1] = NEG_INF  # a window with no finite slot: all zeros, not NaN
    return s.to(device=dev, dtype=dtype)


SOFTMAX_CASES = [
    Case(1, 1, 1, 1, 16, 1, 1),  # a window of one slot
    Case(2, 7, 2, 1, 16, 3, 5),
    Case(1, 33, 2, 1, 16, 5, 40, causal=False),  # rows of 200 slots
    Case(1, 13, 2, 1, 16, None, 4),
    Case(1, 9, 1, 1, 16, 40, 37),  # 1480-slot rows: the block-per-row kernels
]


def _softmax_params():
    params = []
    for bp in BACKENDS:
        name = bp.values[0]
        for dtype in dtypes_of(name):
            for case in SOFTMAX_CASES if dtype == torch.float32 else SOFTMAX_CASES[1:3]:
                params.append(pytest.param(name, case, dtype, marks=bp.marks, id=f"{name}-{case.id}-{dtype}"))
    return params


@pytest.mark.parametrize("backend,case,dtype", _softmax_params())
def test_softmax_parity(backend, case, dtype, poison):
    dev = device_of(backend)
    s = _softmax_input(case, dtype, dev).requires_grad_()
    p = windowed_softmax(s, backend=backend)
    leaf = s.detach().cpu().double().requires_grad_()
    ref = oracle_softmax(leaf)
    assert p.dtype == dtype and p.shape == s.shape
    assert rel_err(p, ref) <= BOUNDS[dtype]
    assert (p.cpu()[s.detach().cpu() == NEG_INF] == 0).all(), "a -inf slot got weight"
    assert (p[0, 0, -1] == 0).all(), "an all -inf window must give zeros"

    dp = torch.randn(s.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (ds,) = torch.autograd.grad(p, s, dp.to(device=dev, dtype=dtype))
    (ref_ds,) = torch.autograd.grad(ref, leaf, dp)
    assert ds.dtype == dtype
    assert torch.isfinite(ds).all()
    assert rel_err(ds, ref_ds) <= BOUNDS[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_large_logits_nan_and_strides(backend, poison):
    """Logits of +-3e4 never overflow; a NaN poisons its own window only (like torch.softmax);
    a non-contiguous view is read through its strides."""
    dev = device_of(backend)
    base = torch.randn(3, 5, 6, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3e4
    base[0, 1, 3, 4] = float("nan")  # lands in window [0, 1] of the view below
    x = base.to(dev, torch.float32)[..., 1:8:2, 2:9]  # [3, 5, 4, 7], non-contiguous
    assert not x.is_contiguous()
    p = windowed_softmax(x, backend=backend)
    ref = oracle_softmax(x.cpu())
    assert torch.isnan(p[0, 1]).all()
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[0, 1] = False
    assert rel_err(p.cpu()[keep], ref[keep]) <= BOUNDS[torch.float32]


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.skipif(not _available("cpu"), reason="C++ CPU kernels not built")
def test_cpu_softmax_every_isa_flavour(isa, monkeypatch, poison):
    """The float32 rows run in three compiled flavours; each must match (a flavour the CPU
    lacks falls back to the best it has, so this never fails for want of AVX-512)."""
    monkeypatch.setenv("SIMPLICIAL_ATTN_CPU_ISA", isa)
    x = _softmax_input(Case(2, 19, 2, 1, 16, 7, 5), torch.float32, "cpu")  # rows of 35: vector tails
    x = torch.cat([x, x * 40], dim=1)  # large logits too
    p = windowed_softmax(x, backend="cpu")
    assert rel_err(p, oracle_softmax(x)) <= BOUNDS[torch.float32]
    dp = torch.randn_like(x)
    ds = torch.ops.simplicial_attn.softmax_bwd(dp, p)
    leaf = x.double().requires_grad_()
    (ref,) = torch.autograd.grad(oracle_softmax(leaf), leaf, dp.double())
    assert rel_err(ds, ref) <= BOUNDS[torch.float32]


@pytest.mark.skipif(not (HAS_GPU or _available("triton")), reason="triton missing or not interpreting")
def test_triton_softmax_looped_rows(poison):
    """Rows longer than the register tile take the two-read kernels: two loop trips each."""
    from simplicial_attn.triton_kernels import scores_softmax as ts

    dev = device_of("triton")
    x = torch.randn(3, 71, 61, generator=torch.Generator().manual_seed(2)) * 4  # 4331 > LOOP_BLOCK
    x[0, :, :5] = NEG_INF
    x[2] = NEG_INF
    x = x.to(dev)
    p = ts.softmax_fwd(x, max_resident=1024)
    ref = oracle_softmax(x.cpu())
    assert rel_err(p, ref) <= BOUNDS[torch.float32]
    assert (p[2] == 0).all()
    dp = torch.randn_like(x)
    leaf = x.cpu().double().requires_grad_()
    (ref_ds,) = torch.autograd.grad(oracle_softmax(leaf), leaf, dp.cpu().double())
    assert rel_err(ts.softmax_bwd(dp, p, max_resident=1024), ref_ds) <= BOUNDS[torch.float32]


# ---- the identity with the fused op ----------------------------------------------------------

IDENTITY_CASES = [Case(2, 9, 4, 2, 16, 3, 5), Case(1, 8, 2, 1, 16, None, 3, causal=False)]


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_contract_to_two_simplicial_attention(backend, case, poison):
    """sum_{a,c} P * v1 (x) v2 over the windows is two_simplicial_attention: forward and grads."""
    if backend == "triton" and not case.causal and not HAS_GPU:
        pytest.skip("one identity case per backend through the interpreter keeps the suite fast")
    dev = device_of(backend)
    fused_reasons = backends.get(backend).not_supported_reasons(dev, torch.float32)
    if fused_reasons:
        pytest.skip(f"two_simplicial_attention has no {backend} backend here: " + "; ".join(fused_reasons))
    inputs = make_inputs(case, torch.float32, dev, requires_grad=True)
    q, k1, k2, v1, v2 = inputs
    p = attention_weights(q, k1, k2, case.w1, case.w2, causal=case.causal, backend=backend)
    out = contract(p, v1, v2, case.w1, case.w2, case.causal)
    ref = sa.two_simplicial_attention(*inputs, case.w1, case.w2, causal=case.causal, backend=backend)
    assert rel_err(out, ref) <= BOUNDS[torch.float32]
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dev)
    grads = torch.autograd.grad(out, inputs, dout)
    ref_grads = torch.autograd.grad(ref, inputs, dout)
    for name, g, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, ref_grads, strict=True):
        assert rel_err(g, r) <= BOUNDS[torch.float32], f"{name}: {rel_err(g, r):.3g}"


# ---- registration: opcheck and torch.compile ------------------------------------------------

CPU_NAMES = ["reference"] + (["cpu"] if _available("cpu") else [])
OPCHECK_CASE = Case(2, 5, 4, 2, 16, 3, 2)


@pytest.mark.parametrize("backend", CPU_NAMES)
def test_opcheck_custom_ops(backend):
    q, k1, k2, _, _ = make_inputs(OPCHECK_CASE, torch.float32, requires_grad=True)
    for w1, w2, causal in ((3, 2, True), (None, 2, False)):
        args = (q, k1, k2, w1, w2, causal, 0.3, "trilinear", backend)
        torch.library.opcheck(scores_mod._scores_op, args)
        s = scores_mod._scores_op(*args)
        ds = torch.where(torch.isfinite(s), torch.randn_like(s), 0)
        torch.library.opcheck(scores_mod._scores_backward_op, (ds, q.detach(), k1.detach(), k2.detach(), *args[3:]))
    s = s.detach().requires_grad_()
    torch.library.opcheck(scores_mod._softmax_op, (s, backend))
    p = scores_mod._softmax_op(s, backend)
    torch.library.opcheck(scores_mod._softmax_backward_op, (torch.randn_like(p), p.detach(), backend))


@pytest.mark.skipif(not _available("cpu"), reason="C++ CPU kernels not built")
def test_opcheck_cpp_schemas():
    q, k1, k2, _, _ = make_inputs(OPCHECK_CASE, torch.float32)
    ops = torch.ops.simplicial_attn
    torch.library.opcheck(ops.scores_fwd.default, (q, k1, k2, 3, None, True, 0.3, "trilinear"))
    s = ops.scores_fwd(q, k1, k2, 3, None, True, 0.3, "trilinear")
    torch.library.opcheck(ops.scores_bwd.default, (torch.randn_like(s), q, k1, k2, 3, None, True, 0.3, "trilinear"))
    torch.library.opcheck(ops.softmax_fwd.default, (s,))
    torch.library.opcheck(ops.softmax_bwd.default, (torch.randn_like(s), ops.softmax_fwd(s)))


@pytest.mark.skipif(not (HAS_GPU or _available("triton")), reason="triton missing or not interpreting")
def test_opcheck_triton():
    q, k1, k2, _, _ = make_inputs(Case(1, 3, 2, 1, 16, 2, 2), torch.float32, device_of("triton"), requires_grad=True)
    args = (q, k1, k2, 2, 2, True, 0.3, "trilinear", "triton")
    torch.library.opcheck(scores_mod._scores_op, args, test_utils=("test_schema", "test_faketensor"))
    s = scores_mod._scores_op(*args).detach().requires_grad_()
    torch.library.opcheck(scores_mod._softmax_op, (s, "triton"), test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_weights_and_grads():
    backend = CPU_NAMES[-1]
    torch._dynamo.reset()

    def f(q, k1, k2):
        return attention_weights(q, k1, k2, 3, 4, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = make_inputs(Case(2, 7, 4, 2, 16, 3, 4), torch.float32, requires_grad=True)[:3]
    eager = [t.detach().clone().requires_grad_() for t in args]
    loss = compiled(*args)
    loss.backward()
    f(*eager).backward()
    torch.testing.assert_close(loss, f(*eager).detach(), rtol=1e-6, atol=1e-6)
    for a, b in zip(args, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


# ---- edge cases and errors --------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_NAMES)
def test_empty_inputs(backend):
    q, k1, k2, _, _ = make_inputs(Case(1, 3, 2, 1, 16, 2, 2), torch.float32)
    s = trilinear_scores(q[:0], k1[:0], k2[:0], 4, None, backend=backend)
    assert s.shape == (0, 2, 3, 4, 3)
    s = trilinear_scores(q[:, :0], k1[:, :0], k2[:, :0], None, 5, causal=False, backend=backend)
    assert s.shape == (1, 2, 0, 0, 5)
    assert windowed_softmax(s, backend=backend).shape == s.shape
    leaves = [t[:, :0].clone().requires_grad_() for t in (q, k1, k2)]
    trilinear_scores(*leaves, 2, 2, backend=backend).sum().backward()
    assert leaves[0].grad.shape == (1, 0, 2, 16)


def test_validation_errors():
    q, k1, k2, _, _ = make_inputs(Case(1, 3, 2, 1, 16, 2, 2), torch.float32)
    with pytest.raises(ValueError, match="w1 must be an int >= 1"):
        trilinear_scores(q, k1, k2, 0, 2)
    with pytest.raises(TypeError, match="w2 must be an int"):
        trilinear_scores(q, k1, k2, 2, 2.5)
    with pytest.raises(ValueError, match="k2 must have k1's shape"):
        trilinear_scores(q, k1, k2[:, :2], 2, 2)
    with pytest.raises(TypeError, match="scale must be a float"):
        trilinear_scores(q, k1, k2, 2, 2, scale="big")
    with pytest.raises(ValueError, match="backend must be one of"):
        trilinear_scores(q, k1, k2, 2, 2, backend="fast")
    with pytest.raises(BackendNotSupported, match="needs cuda tensors"):
        trilinear_scores(q, k1, k2, 2, 2, backend="cuda")
    with pytest.raises(BackendNotSupported, match="float64"):
        windowed_softmax(torch.zeros(2, 2, dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError, match="scores must have rank >= 2"):
        windowed_softmax(torch.zeros(4))
    with pytest.raises(TypeError, match="scores must have dtype"):
        windowed_softmax(torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        windowed_softmax([[0.0]])


@pytest.mark.skipif(not _available("cpu"), reason="C++ CPU kernels not built")
def test_cpp_errors_name_the_argument():
    q, k1, k2, _, _ = make_inputs(Case(1, 3, 2, 1, 16, 2, 2), torch.float32)
    ops = torch.ops.simplicial_attn
    with pytest.raises(RuntimeError, match="w1 must be >= 1"):
        ops.scores_fwd(q, k1, k2, 0, 2, True, 1.0, "trilinear")
    with pytest.raises(RuntimeError, match="k2 must have shape"):
        ops.scores_fwd(q, k1, k2[:, :2], 2, 2, True, 1.0, "trilinear")
    with pytest.raises(RuntimeError, match="dscores must have shape"):
        ops.scores_bwd(torch.zeros(1, 2, 3, 2, 3), q, k1, k2, 2, 2, True, 1.0, "trilinear")
    with pytest.raises(RuntimeError, match="logits must be 'trilinear' or 'determinant'"):
        ops.scores_fwd(q, k1, k2, 2, 2, True, 1.0, "cubic")
    with pytest.raises(RuntimeError, match="scores must have rank >= 2"):
        ops.softmax_fwd(torch.zeros(3))
    with pytest.raises(RuntimeError, match="dprobs must have probs' shape"):
        ops.softmax_bwd(torch.zeros(2, 3), torch.zeros(3, 2))
