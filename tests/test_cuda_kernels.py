"""The CUDA C++ kernels (backend "cuda") on a GPU, against the float64 oracle, the reference
backend and the Triton backend. Skipped, with the reason, without a GPU or without the CUDA
build of the extension.

Kernel-level calls go through torch.ops.simplicial_attn.fused_fwd / fused_bwd (kernel windows,
as the backends receive them); the public function is checked once end to end with autograd.
Outputs are poisoned (NaN) before every call. Runtime on an H100: ~1-2 minutes, most of it the
dense float64 oracle and the reference backend at the realistic sizes.
"""

import itertools

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.backends import extension, reference
from simplicial_attn.problem import Problem

from cases import BOUNDS, CASES_FULL, Case, bands, make_dout, make_inputs, rel_err
from oracle import oracle_bwd, oracle_fwd

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not extension.has_kernel("cuda"), reason="simplicial_attn._C was built without CUDA kernels"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
GRADS = ("dq", "dk1", "dk2", "dv1", "dv2")

# Runtime paths of the kernels beyond the shared grid (see tests/test_cuda_emulated.py).
SPECIAL = [
    Case(1, 5, 32, 2, 24, 3, 2),  # head packing, 16 query heads per kv head
    Case(1, 6, 17, 1, 20, 4, 6, causal=False),  # head packing, odd group, unaligned rows (scalar loads)
    Case(1, 9, 1, 1, 200, 5, 4),  # D = 200 -> 256 kernels, output columns split over 2 CTAs
    Case(1, 97, 2, 1, 64, 40, 20),  # several k1/v1 blocks and offset chunks
    Case(1, 300, 4, 1, 96, 100, 70, causal=False),  # D = 96 -> 128 kernels, w2 > w1 / 2
]

# Realistic sizes: (B, N, Hq, Hkv, D, w1, w2, causal).
REALISTIC = [
    Case(2, 1024, 8, 2, 64, 512, 32),
    Case(1, 2048, 4, 4, 128, 512, 32),
    Case(2, 777, 16, 1, 128, 256, 64, causal=False),  # head packing (group 16)
    Case(1, 1500, 2, 1, 200, 64, 16),
    Case(1, 1000, 4, 2, 64, 16, 300),  # w2 > w1: the kernels swap the key roles
]


def _kernel_windows(case):
    """The windows of the case's bands (None and windows past the sequence clipped to it)."""
    return tuple(b.width for b in bands(case.w1, case.w2, case.causal, case.N))


def _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, scale):
    prob = Problem(*bands(case.w1, case.w2, case.causal, case.N), scale).fused_args()
    out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob)
    grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
    return out, lse, grads


def _assert_close(name, got, ref, bound):
    err = rel_err(got, ref)
    assert err <= bound, f"{name}: relative error {err:.2e} > {bound:.0e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASES_FULL + SPECIAL, ids=lambda c: c.id)
def test_matches_oracle(case, dtype, poison):
    q, k1, k2, v1, v2 = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    scale = case.D**-0.5
    out, lse, grads = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, scale)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale)
    _assert_close("out", out, ref_out, BOUNDS[dtype])
    _assert_close("lse", lse, ref_lse, BOUNDS[dtype])
    assert lse.dtype == torch.float32 and lse.shape == (case.B, case.Hq, case.N)
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, scale)
    for name, g, r, x in zip(GRADS, grads, refs, (q, k1, k2, v1, v2), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype
        _assert_close(name, g, r, BOUNDS[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", REALISTIC, ids=lambda c: c.id)
def test_realistic_vs_reference(case, dtype, poison):
    q, k1, k2, v1, v2 = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    w1, w2 = _kernel_windows(case)
    scale = case.D**-0.5
    out, lse, grads = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, scale)
    # The reference computes in float32 from the same low-precision inputs: its own error is far
    # below the bound, so the bound applies to the difference.
    prob = Problem(*bands(w1, w2, case.causal), scale)
    ref_out, ref_lse, ref_lse_lo = reference.fwd(q, k1, k2, v1, v2, prob)
    _assert_close("out", out, ref_out, BOUNDS[dtype])
    _assert_close("lse", lse, ref_lse, BOUNDS[dtype])
    refs = reference.bwd(dout, q, k1, k2, v1, v2, ref_out, ref_lse, ref_lse_lo, prob)
    for name, g, r in zip(GRADS, grads, refs, strict=True):
        _assert_close(name, g, r, BOUNDS[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("case", REALISTIC, ids=lambda c: c.id)
def test_realistic_vs_triton(case, poison):
    pytest.importorskip("triton", reason="triton is not installed")
    from simplicial_attn import triton_kernels

    dtype = torch.bfloat16
    q, k1, k2, v1, v2 = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    w1, w2 = _kernel_windows(case)
    scale = case.D**-0.5
    out, lse, grads = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, scale)
    prob = Problem(*bands(w1, w2, case.causal), scale)
    t_out, t_lse, t_lse_lo = triton_kernels.fwd(q, k1, k2, v1, v2, prob)
    t_grads = triton_kernels.bwd(dout, q, k1, k2, v1, v2, t_out, t_lse, t_lse_lo, prob)
    # Both carry bf16 rounding of their own: allow the sum of the two bounds.
    bound = 2 * BOUNDS[dtype]
    _assert_close("out", out, t_out, bound)
    _assert_close("lse", lse, t_lse, bound)
    for name, g, r in zip(GRADS, grads, t_grads, strict=True):
        _assert_close(name, g, r, bound)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d).removeprefix("torch."))
def test_any_strides(dtype, poison):
    """Views in [B, H, N, D] memory order with padded rows (strides passed through), and a
    non-unit stride on D (copied by api.cpp)."""
    case = Case(2, 45, 4, 2, 64, 9, 5)
    q, k1, k2, v1, v2 = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")

    def padded(t):
        B, N, H, D = t.shape
        base = torch.full((B, H, N, D + 8), float("nan"), dtype=dtype, device="cuda")
        base[..., :D] = t.permute(0, 2, 1, 3)
        return base[..., :D].permute(0, 2, 1, 3)

    def strided_d(t):
        base = torch.full((*t.shape[:3], 2 * t.shape[3]), float("nan"), dtype=dtype, device="cuda")
        base[..., ::2] = t
        return base[..., ::2]

    views = [padded(q), strided_d(k1), padded(k2), strided_d(v1), padded(v2)]
    assert views[1].stride(3) == 2
    out, lse, grads = _cuda_fwd_bwd(case, *views, padded(dout), 0.2)
    ref_out, ref_lse = oracle_fwd(q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.2)
    _assert_close("out", out, ref_out, BOUNDS[dtype])
    refs = oracle_bwd(dout, q, k1, k2, v1, v2, case.w1, case.w2, case.causal, 0.2)
    for name, g, r in zip(GRADS, grads, refs, strict=True):
        _assert_close(name, g, r, BOUNDS[dtype])


def test_deterministic():
    """No atomics: two runs give the same bits."""
    case = Case(2, 300, 8, 2, 64, 64, 16)
    q, k1, k2, v1, v2 = make_inputs(case, torch.bfloat16, "cuda")
    dout = make_dout(case, torch.bfloat16, "cuda")
    first = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, 0.125)
    second = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, 0.125)
    for a, b in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]], strict=True):
        assert torch.equal(a, b)


def test_current_stream():
    """The kernels run on the caller's current stream (no hidden default-stream work)."""
    case = Case(1, 200, 4, 1, 128, 32, 8)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float16, "cuda")
    dout = make_dout(case, torch.float16, "cuda")
    expected = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, 0.1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _cuda_fwd_bwd(case, q, k1, k2, v1, v2, dout, 0.1)
    side.synchronize()
    for a, b in zip([expected[0], *expected[2]], [got[0], *got[2]], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d).removeprefix("torch."))
def test_public_api_autograd(dtype):
    case = Case(2, 37, 4, 2, 64, 7, 5, causal=False)
    inputs = make_inputs(case, dtype, "cuda", requires_grad=True)
    dout = make_dout(case, dtype, "cuda")
    out = sa.two_simplicial_attention(*inputs, w1=case.w1, w2=case.w2, causal=False, backend="cuda")
    grads = torch.autograd.grad(out, inputs, dout)
    ref_out, _ = oracle_fwd(*inputs, case.w1, case.w2, False, None)
    _assert_close("out", out, ref_out, BOUNDS[dtype])
    for name, g, r in zip(GRADS, grads, oracle_bwd(dout, *inputs, case.w1, case.w2, False, None), strict=True):
        _assert_close(name, g, r, BOUNDS[dtype])


@pytest.mark.slow
def test_offsets_beyond_2_31():
    """q, out, dout, dq hold more than 2^31 elements: every offset must be 64-bit. With short
    causal windows the last positions depend only on a short tail, checked against the oracle."""
    B, N, Hq, Hkv, D, w1, w2 = 1, (1 << 21) + 64, 8, 1, 128, 4, 3
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with >= 40 GiB (several 4 GiB tensors)")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, N, Hq, D, device="cuda", dtype=torch.float16, generator=g)
    k1, k2, v1, v2 = (torch.randn(B, N, Hkv, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(4))
    dout = torch.randn(B, N, Hq, D, device="cuda", dtype=torch.float16, generator=g)
    assert q.numel() > 2**31
    prob = Problem(*bands(w1, w2, True), D**-0.5).fused_args()
    out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob)
    grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob)
    S = 32  # tail positions given to the oracle; rows >= N - S + 8 see only tail positions
    tail = [t[:, N - S :] for t in (q, k1, k2, v1, v2)]
    ref_out, _ = oracle_fwd(*tail, w1, w2, True, D**-0.5)
    ref_grads = oracle_bwd(dout[:, N - S :], *tail, w1, w2, True, D**-0.5)
    keep = slice(8, S - 8)  # kv grads need every query that reads them inside the tail too
    _assert_close("out", out[:, N - S :][:, 8:], ref_out[:, 8:], BOUNDS[torch.float16])
    _assert_close("dq", grads[0][:, N - S :][:, 8:], ref_grads[0][:, 8:], BOUNDS[torch.float16])
    for name, got, ref in zip(GRADS[1:], grads[1:], ref_grads[1:], strict=True):
        _assert_close(name, got[:, N - S :][:, keep], ref[:, keep], BOUNDS[torch.float16])


def test_rejects_float64_and_empty_is_empty():
    case = Case(1, 8, 2, 1, 16, 4, 4)
    q, k1, k2, v1, v2 = make_inputs(case, torch.float64, "cuda")
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *Problem(*bands(4, 4, True), 0.25).fused_args())
    empty = [t[:, :0].float() for t in (q, k1, k2, v1, v2)]
    out, lse, _ = torch.ops.simplicial_attn.fused_fwd(*empty, *Problem(*bands(1, 1, True), 0.25).fused_args())
    assert out.shape == (1, 0, 2, 16) and lse.shape == (1, 2, 0)


def test_varlen_max_seqlen_is_only_a_hint():
    """max_seqlen larger than the packing (even than T) changes nothing: CONTRACT §6 asks only that
    it bound every length."""
    lengths, D = [5, 0, 12], 16
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k1, k2, v1, v2 = (torch.randn(1, sum(lengths), h, D, generator=g).cuda() for h in (2, 1, 1, 1, 1))
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    outs = []
    for hint in (12, 100, 1 << 40):
        prob = Problem(*bands(4, 3, True), D**-0.5, cu_seqlens=cu, max_seqlen=hint)
        outs.append(torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob.fused_args()))
    for out, lse, lse_lo in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(lse, outs[0][1]) and torch.equal(lse_lo, outs[0][2])


# ---- packed sequences, determinant logits and decoding at realistic sizes, against the reference


def _realistic_check(got, ref, dtype, names):
    for name, g, r in zip(names, got, ref, strict=True):
        _assert_close(name, g, r, BOUNDS[dtype])


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: str(d).removeprefix("torch.")
)
def test_realistic_varlen_vs_reference(dtype, poison):
    """A realistic packing (empty, length-1 and long sequences) through the kernel ops against the
    reference backend's packed implementation."""
    lengths, Hq, Hkv, D, w1, w2 = [700, 0, 1, 64, 1500, 333], 8, 2, 64, 256, 32
    g = torch.Generator(device="cpu").manual_seed(0)
    T = sum(lengths)
    q, k1, k2, v1, v2, dout = (
        torch.randn(1, T, h, D, generator=g).to("cuda", dtype) for h in (Hq, Hkv, Hkv, Hkv, Hkv, Hq)
    )
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    prob = Problem(*bands(w1, w2, True), D**-0.5, cu_seqlens=cu, max_seqlen=max(lengths))
    out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob.fused_args())
    grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob.fused_args())
    r_out, r_lse, r_lse_lo = reference.fwd(q, k1, k2, v1, v2, prob)
    refs = reference.bwd(dout, q, k1, k2, v1, v2, r_out, r_lse, r_lse_lo, prob)
    _realistic_check((out, lse, *grads), (r_out, r_lse, *refs), dtype, ("out", "lse", *GRADS))


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: str(d).removeprefix("torch.")
)
def test_realistic_determinant_vs_reference(dtype, poison):
    case = Case(2, 1000, 8, 2, 96, 256, 48)
    q, k1, k2, v1, v2 = make_inputs(case, dtype, "cuda")
    dout = make_dout(case, dtype, "cuda")
    prob = Problem(*bands(case.w1, case.w2, True), case.D**-0.5, "determinant")
    out, lse, lse_lo = torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob.fused_args())
    grads = torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob.fused_args())
    r_out, r_lse, r_lse_lo = reference.fwd(q, k1, k2, v1, v2, prob)
    refs = reference.bwd(dout, q, k1, k2, v1, v2, r_out, r_lse, r_lse_lo, prob)
    _realistic_check((out, lse, *grads), (r_out, r_lse, *refs), dtype, ("out", "lse", *GRADS))


@pytest.mark.slow
@pytest.mark.parametrize("nq", [1, 4])
@pytest.mark.parametrize("logits", ["trilinear", "determinant"])
def test_realistic_decode_vs_reference(nq, logits, poison):
    """Decoding at w1 = 512 (32 splits) against rings that have wrapped, for sequences of different
    lengths, against the reference backend's decode."""
    B, Hq, Hkv, D, w1, w2, dtype = 4, 8, 2, 96, 512, 32, torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)
    c1, c2 = w1 + nq - 1, w2 + nq - 1
    caches = [torch.randn(B, c, Hkv, D, generator=g).to("cuda", dtype) for c in (c1, c2, c1, c2)]
    q = torch.randn(B, nq, Hq, D, generator=g).to("cuda", dtype)
    lengths = torch.tensor([0, 77, 600, 5000], dtype=torch.int32, device="cuda")
    prob = Problem(*bands(w1, w2, True), D**-0.5, logits, cache_seqlens=lengths)
    out, lse = torch.ops.simplicial_attn.fused_decode(q, *caches, *prob.decode_args())
    r_out, r_lse = reference.decode(q, *caches, prob)
    _realistic_check((out, lse), (r_out, r_lse), dtype, ("out", "lse"))
