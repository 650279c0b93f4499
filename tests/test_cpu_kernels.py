"""The C++ CPU kernels (csrc/cpu/) called directly through torch.ops.simplicial_attn.fused_*.

Parity with the dense float64 oracle over the shared case grid (outputs, lse, all five
gradients; float32 on every instruction-set flavour this CPU has, float64, bfloat16, float16),
gradcheck in float64, bitwise determinism across runs and thread counts, any strides, and the
C++ argument checks. About 8 s on the idle 2-core CI machine (40-60 s while other jobs load it).
"""

import pytest
import torch

from simplicial_attn.backends import extension
from simplicial_attn.problem import Problem

from cases import BOUNDS, CASES_FULL, Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

if not extension.has_kernel("cpu"):
    pytest.skip(
        f"the C++ extension simplicial_attn._C with CPU kernels is not built ({extension.build_info()})",
        allow_module_level=True,
    )

ops = torch.ops.simplicial_attn
ISA_ENV = "SIMPLICIAL_ATTN_CPU_ISA"


def _isas():
    """Instruction-set flavours to test: the portable one plus what ATen sees on this CPU."""
    cap = torch.backends.cpu.get_cpu_capability()
    isas = ["base"]
    if cap in ("AVX2", "AVX512"):
        isas.append("avx2")
    if cap == "AVX512":
        isas.append("avx512")
    return isas


ISAS = _isas()


def _windows(case):
    """The windows of the case's bands (None and windows past the sequence clipped to it)."""
    return tuple(b.width for b in bands(case.w1, case.w2, case.causal, case.N))


def _call(case, q, k1, k2, v1, v2, dout, scale=None):
    """fused_fwd then fused_bwd on the given tensors; returns (out, lse, grads)."""
    w1, w2 = _windows(case)
    scale = case.D**-0.5 if scale is None else scale
    prob = Problem(*bands(w1, w2, case.causal), scale).fused_args()
    out, lse, lse_lo = ops.fused_fwd(q, k1, k2, v1, v2, *prob)
    grads = ops.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
    return out, lse, grads


def _oracle(case, inputs, dout, scale=None):
    out, lse = oracle_fwd(*inputs, case.w1, case.w2, case.causal, scale)
    return out, lse, oracle_bwd(dout, *inputs, case.w1, case.w2, case.causal, scale)


NAMES = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")


def _check_against(got, ref, bound, what):
    out, lse, grads = got
    rout, rlse, rgrads = ref
    # strict=False: a check may leave the gradients out (empty tuples).
    for name, x, r in zip(NAMES, (out, lse, *grads), (rout, rlse, *rgrads), strict=False):
        assert x.shape == r.shape, f"{what}: {name} shape {tuple(x.shape)} != {tuple(r.shape)}"
        err = rel_err(x, r)
        assert err <= bound, f"{what}: {name} relative error {err:.3e} > {bound:.1e}"


def _check_types(case, inputs, got):
    out, lse, grads = got
    q = inputs[0]
    assert out.dtype == q.dtype and out.is_contiguous()
    assert lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32)
    assert lse.shape == (case.B, case.Hq, case.N)
    for g, x in zip(grads, inputs, strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES_FULL, ids=lambda c: c.id)
def test_parity_with_oracle(case, dtype, poison, monkeypatch):
    inputs = make_inputs(case, dtype, seed=3)
    dout = make_dout(case, dtype, seed=4)
    ref = _oracle(case, inputs, dout)
    # float32 runs on every flavour; the others share the float32 kernels (fp16/bf16, packed to
    # float32) or have only one (float64), so the default flavour suffices.
    for isa in ISAS if dtype == torch.float32 else [""]:
        monkeypatch.setenv(ISA_ENV, isa)
        got = _call(case, *inputs, dout)
        _check_types(case, inputs, got)
        _check_against(got, ref, BOUNDS[dtype], f"{case.id} {dtype} isa={isa or 'default'}")


# Windows wider than one tile of the kernel (j tile 128, k tile 32), several query blocks whose
# halos reach more than one neighbour (both sides when centred), D padded to the vector width
# (12: rows gathered and scattered even in float32), GQA: the paths the small grid reaches only
# in part.
MULTI_TILE = [
    Case(1, 150, 2, 1, 40, 140, 40, causal=True),
    Case(1, 150, 2, 1, 40, 200, 70, causal=False),
    Case(2, 61, 4, 2, 12, 20, 9, causal=False),
]


@pytest.mark.parametrize("case", MULTI_TILE, ids=lambda c: c.id)
def test_parity_multi_tile(case, poison, monkeypatch):
    inputs = make_inputs(case, torch.float32, seed=5)
    dout = make_dout(case, torch.float32, seed=6)
    ref = _oracle(case, inputs, dout)
    for isa in ISAS:
        monkeypatch.setenv(ISA_ENV, isa)
        _check_against(_call(case, *inputs, dout), ref, BOUNDS[torch.float32], f"{case.id} isa={isa}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_custom_scale_and_large_logits(dtype, poison):
    # Logits up to ~1.4e3 (exp overflows float32 past 88): the running max keeps everything
    # finite. Such logits are ill-conditioned (a float32 rounding of the logit alone moves P by
    # ~1e-4), so float32 is held to its bound on the forward only; float64 on everything.
    case = Case(2, 19, 4, 2, 16, 7, 5)
    q, k1, k2, v1, v2 = make_inputs(case, dtype, seed=7)
    q = q * 30
    dout = make_dout(case, dtype)
    got = _call(case, q, k1, k2, v1, v2, dout, scale=2.5)
    ref = _oracle(case, (q, k1, k2, v1, v2), dout, scale=2.5)
    assert all(torch.isfinite(x).all() for x in (got[0], got[1], *got[2]))
    if dtype == torch.float32:
        got, ref = (got[0], got[1], ()), (ref[0], ref[1], ())
    _check_against(got, ref, BOUNDS[dtype], f"large logits {dtype}")


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k1, k2, v1, v2, w1, w2, causal, scale):
        ctx.args = Problem(*bands(w1, w2, causal), scale).fused_args()
        out, lse, lse_lo = ops.fused_fwd(q, k1, k2, v1, v2, *ctx.args)
        ctx.save_for_backward(q, k1, k2, v1, v2, out, lse, lse_lo)
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = ops.fused_bwd(dout.contiguous(), *ctx.saved_tensors, *ctx.args)
        return (*grads, None, None, None, None)


@pytest.mark.parametrize(
    "case",
    [Case(1, 6, 2, 1, 4, 3, 2), Case(2, 5, 2, 2, 3, 4, 3, causal=False), Case(1, 4, 4, 1, 5, None, None)],
    ids=lambda c: c.id,
)
def test_gradcheck_float64(case):
    inputs = make_inputs(case, torch.float64, seed=8, requires_grad=True)
    w1, w2 = _windows(case)
    assert torch.autograd.gradcheck(lambda *x: _Fused.apply(*x, w1, w2, case.causal, 0.7), inputs)


def test_deterministic_across_runs_and_threads():
    case = Case(1, 150, 4, 2, 64, 140, 40)
    inputs = make_inputs(case, torch.float32, seed=9)
    dout = make_dout(case, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = _call(case, *inputs, dout), _call(case, *inputs, dout)
        torch.set_num_threads(1)
        single = _call(case, *inputs, dout)
    finally:
        torch.set_num_threads(threads)
    flat = [(first[0], first[1], *first[2]), (second[0], second[1], *second[2]), (single[0], single[1], *single[2])]
    for name, a, b, c in zip(NAMES, *flat, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
        assert torch.equal(a, c), f"{name} differs between 2 threads and 1 thread"


def test_any_strides_give_identical_results():
    case = Case(2, 37, 4, 2, 40, 9, 6, causal=False)
    inputs = make_inputs(case, torch.float32, seed=10)
    dout = make_dout(case, torch.float32)
    expected = _call(case, *inputs, dout)

    def strided(t):
        # Head-major storage viewed back as [B, N, H, D], plus a stride-2 slice of D.
        wide = torch.zeros(t.shape[0], t.shape[2], t.shape[1], 2 * t.shape[3])
        wide[..., ::2] = t.transpose(1, 2)
        return wide[..., ::2].transpose(1, 2)

    views = [strided(t) for t in inputs]
    assert not any(v.is_contiguous() for v in views)
    w1, w2 = _windows(case)
    scale = case.D**-0.5
    prob = Problem(*bands(w1, w2, case.causal), scale).fused_args()
    out, lse, lse_lo = ops.fused_fwd(*views, *prob)
    lse_t = lse.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    grads = ops.fused_bwd(strided(dout), *views, strided(out), lse_t, lse_lo, *prob)
    for name, a, b in zip(NAMES, (out, lse, *grads), (expected[0], expected[1], *expected[2]), strict=True):
        assert torch.equal(a, b), f"{name} depends on the input strides"


@pytest.mark.parametrize("isa", ISAS)
def test_nan_propagates_to_the_rows_that_see_it(isa, monkeypatch):
    monkeypatch.setenv(ISA_ENV, isa)
    case = Case(1, 12, 2, 1, 16, 3, 2)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float32, seed=11)
    q[0, 5, 1, 3] = float("nan")
    w1, w2 = _windows(case)
    out, lse, _ = ops.fused_fwd(q, k1, k2, v1, v2, *Problem(*bands(w1, w2, True), 0.25).fused_args())
    assert out[0, 5, 1].isnan().all() and lse[0, 1, 5].isnan()
    rest = torch.ones_like(out, dtype=torch.bool)
    rest[0, 5, 1] = False
    assert torch.isfinite(out[rest]).all()


def _good(dtype=torch.float32):
    return make_inputs(Case(1, 8, 4, 2, 16, 4, 4), dtype, seed=12)


@pytest.mark.parametrize(
    "mutate, bands, pattern",
    [
        (lambda t: (t[0][0], *t[1:]), (3, 0, 3, 0), "q must have rank 4"),
        (lambda t: (t[0], t[1].double(), *t[2:]), (3, 0, 3, 0), "k1 must have dtype"),
        (lambda t: (*t[:4], t[4][:, :7]), (3, 0, 3, 0), "v2 must have shape"),
        (lambda t: (t[0][:, :, :3], *t[1:]), (3, 0, 3, 0), "must be a multiple of Hkv"),
        (lambda t: tuple(x.to(torch.int32) for x in t), (3, 0, 3, 0), "q must have dtype"),
        (lambda t: t, (-1, 0, 3, 0), r"the band of k1 \(left1, right1\) must have reaches >= 0, got \(-1, 0\)"),
        (lambda t: t, (3, 0, 1, -2), r"the band of k2 \(left2, right2\) must have reaches >= 0, got \(1, -2\)"),
    ],
    ids=["rank", "dtype-mismatch", "shape", "gqa", "int-dtype", "band1", "band2"],
)
def test_fwd_argument_errors(mutate, bands, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        ops.fused_fwd(*mutate(_good()), None, 0, *bands, 0.25, "trilinear")


def test_bwd_argument_errors():
    q, k1, k2, v1, v2 = _good()
    prob = Problem(*bands(4, 4, True), 0.25).fused_args()
    out, lse, lse_lo = ops.fused_fwd(q, k1, k2, v1, v2, *prob)
    with pytest.raises(RuntimeError, match="lse must have dtype"):
        ops.fused_bwd(out, q, k1, k2, v1, v2, out, lse.double(), lse_lo, *prob)
    with pytest.raises(RuntimeError, match="lse must have shape"):
        ops.fused_bwd(out, q, k1, k2, v1, v2, out, lse[:, :, :5], lse_lo, *prob)
    with pytest.raises(RuntimeError, match="dout must have shape"):
        ops.fused_bwd(out[:, :5], q, k1, k2, v1, v2, out, lse, lse_lo, *prob)


def test_bad_isa_variable_is_an_error(monkeypatch):
    monkeypatch.setenv(ISA_ENV, "sse9")
    with pytest.raises(RuntimeError, match="SIMPLICIAL_ATTN_CPU_ISA must be one of"):
        ops.fused_fwd(*_good(), *Problem(*bands(4, 4, True), 0.25).fused_args())
