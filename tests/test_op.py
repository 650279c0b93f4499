"""The registered op: opcheck, torch.compile, gradcheck, backend choice, strides, numerics."""

import pytest
import torch

import simplicial_attn as sa
from simplicial_attn import backends
from simplicial_attn.backends import extension
from simplicial_attn.ops import library

from cases import Case, make_inputs, rel_err
from oracle import oracle_fwd

CPU_BACKENDS = ["reference"] + (["cpu"] if extension.has_kernel("cpu") else [])


SMALL = Case(2, 7, 4, 2, 16, 3, 4)


def small_inputs(dtype=torch.float32, requires_grad=False, case=SMALL):
    return make_inputs(case, dtype, requires_grad=requires_grad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_opcheck(backend, causal):
    q, k1, k2, v1, v2 = small_inputs(requires_grad=True)
    prob = (None, None, 3, 4, causal, 0.25, "trilinear", backend)
    torch.library.opcheck(library.attention, (q, k1, k2, v1, v2, *prob))
    out, lse, lse_lo = library.attention(q, k1, k2, v1, v2, *prob)
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k1.detach(), k2.detach(), v1.detach(), v2.detach(), out.detach(), lse, lse_lo)
    torch.library.opcheck(library.attention_backward, (*args, *prob))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()

    def f(q, k1, k2, v1, v2):
        return sa.two_simplicial_attention(q, k1, k2, v1, v2, w1=3, w2=4, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = small_inputs(requires_grad=True)
    eager_args = [t.detach().clone().requires_grad_() for t in args]
    loss = compiled(*args)
    loss.backward()
    f(*eager_args).backward()
    torch.testing.assert_close(loss, f(*eager_args), rtol=1e-6, atol=1e-6)
    for a, b in zip(args, eager_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_compile_inductor_fullgraph():
    """The default inductor backend too (it compiles the surrounding graph with a C++ toolchain)."""
    torch._dynamo.reset()
    f = torch.compile(lambda *a: sa.two_simplicial_attention(*a, w1=2, w2=3, backend="reference") * 2, fullgraph=True)
    args = small_inputs()
    torch.testing.assert_close(f(*args), 2 * sa.two_simplicial_attention(*args, w1=2, w2=3, backend="reference"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(backend, causal):
    args = make_inputs(Case(1, 5, 2, 1, 4, 3, 2, causal), torch.float64, requires_grad=True)
    fn = lambda *a: sa.two_simplicial_attention(*a, w1=3, w2=2, causal=causal, backend=backend)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_lse_is_not_differentiable():
    out, lse = sa.two_simplicial_attention(*small_inputs(requires_grad=True), w1=3, w2=4, return_lse=True)
    assert out.requires_grad and not lse.requires_grad


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_any_strides(backend):
    """Inputs in [B, H, N, D] memory seen through a transpose, plus a sliced head dim."""
    case = Case(2, 11, 4, 2, 16, 4, 3)
    contiguous = make_inputs(case, torch.float32)
    strided = []
    for t in contiguous:
        base = torch.randn(t.shape[0], t.shape[2], t.shape[1], t.shape[3] + 3)
        view = base.transpose(1, 2)[..., 1 : 1 + t.shape[3]]
        view.copy_(t)
        assert not view.is_contiguous()
        strided.append(view)
    expect = sa.two_simplicial_attention(*contiguous, w1=4, w2=3, backend=backend)
    got = sa.two_simplicial_attention(*strided, w1=4, w2=3, backend=backend)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_scale(backend):
    args = small_inputs()
    out = sa.two_simplicial_attention(*args, w1=3, w2=4, scale=0.7, backend=backend)
    ref, _ = oracle_fwd(*args, 3, 4, True, 0.7)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_logits_do_not_overflow(backend):
    """Logits around 1e4 would overflow exp() without the running max."""
    q, k1, k2, v1, v2 = small_inputs()
    out, lse = sa.two_simplicial_attention(
        q * 30, k1 * 30, k2 * 30, v1, v2, w1=3, w2=4, return_lse=True, backend=backend
    )
    assert torch.isfinite(out).all() and torch.isfinite(lse).all() and lse.abs().max() > 1e3
    ref, _ = oracle_fwd(q * 30, k1 * 30, k2 * 30, v1, v2, 3, 4, True)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_finite_inputs_propagate(backend):
    """A NaN in one key reaches exactly the queries whose window holds it, as in the oracle."""
    q, k1, k2, v1, v2 = small_inputs()
    k1 = k1.clone()
    k1[0, 2, 1, 3] = float("nan")
    out = sa.two_simplicial_attention(q, k1, k2, v1, v2, w1=3, w2=4, backend=backend)
    ref, _ = oracle_fwd(q, k1, k2, v1, v2, 3, 4, True)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out[0, 2:5, 2:4].isnan().all() and not out[0, 5:].isnan().any() and not out[1].isnan().any()


def test_auto_uses_the_choice_table(monkeypatch):
    expected = "cpu" if extension.has_kernel("cpu") else "reference"
    assert backends.select("auto", "cpu", torch.float32) == expected
    assert backends.select("auto", "cpu", torch.float64) == expected
    monkeypatch.setenv("SIMPLICIAL_ATTN_BACKEND", "reference")
    assert backends.select("auto", "cpu", torch.float32) == "reference"
    # The override replaces "auto" only; an explicit choice wins.
    assert backends.select("reference", "cpu", torch.float32) == "reference"


@pytest.mark.parametrize(
    "capability, first",
    [
        ((8, 0), "cuda"),
        ((8, 6), "cuda"),
        ((8, 9), "cuda"),
        ((9, 0), "triton"),
        ((10, 0), "triton"),
        ((12, 0), "triton"),
    ],  # fmt: skip
)
def test_auto_orders_the_gpu_backends_per_arch(monkeypatch, capability, first):
    # Issue 23: CUDA C++ is the fast path on sm_80/86/89, Triton on sm_90 and newer. The GPU's
    # capability is faked (no GPU here); the reasons say every backend can serve, so "auto"
    # answers with the head of the chosen order, and falls to the second when the first cannot.
    monkeypatch.setattr(backends, "_CAPABILITY", {3: capability})
    device = torch.device("cuda", 3)
    assert backends.device_class(device) == ("cuda:sm8x" if capability[0] == 8 else "cuda")
    assert backends.select("auto", device, torch.bfloat16, reasons=lambda *a: []) == first
    second = {"cuda": "triton", "triton": "cuda"}[first]
    only_second = lambda name, *a: [] if name in (second, "reference") else ["not here"]  # noqa: E731
    assert backends.select("auto", device, torch.bfloat16, reasons=only_second) == second
    # An explicit choice is never reordered.
    assert backends.select(second, device, torch.bfloat16, reasons=lambda *a: []) == second


def test_env_override_reaches_the_kernel(monkeypatch):
    calls = []
    real = backends.ReferenceBackend.fwd
    monkeypatch.setattr(backends.ReferenceBackend, "fwd", lambda self, *a: calls.append(1) or real(self, *a))
    monkeypatch.setenv("SIMPLICIAL_ATTN_BACKEND", "reference")
    sa.two_simplicial_attention(*small_inputs(), w1=3, w2=4)
    assert calls == [1]


def test_explicit_backend_that_cannot_serve_says_why():
    with pytest.raises(sa.BackendNotSupported, match=r"backend='cuda' cannot serve this call: .*needs cuda tensors"):
        sa.two_simplicial_attention(*small_inputs(), w1=3, w2=4, backend="cuda")
    with pytest.raises(sa.BackendNotSupported, match=r"backend='triton' cannot serve this call: .*float64"):
        sa.two_simplicial_attention(*small_inputs(torch.float64), w1=3, w2=4, backend="triton")


def test_not_supported_reasons_per_backend():
    ref = backends.get("reference")
    assert ref.not_supported_reasons("cpu", torch.float64) == []
    assert ref.not_supported_reasons("cuda", torch.bfloat16) == []
    cpu = backends.get("cpu").not_supported_reasons("cuda", torch.float32)
    assert any("needs cpu tensors, got cuda tensors" in r for r in cpu)
    cuda = backends.get("cuda").not_supported_reasons("cuda", torch.float64)
    assert any("got float64" in r for r in cuda)
    if not extension.extension_loaded():
        assert any("not built" in r for r in cpu)


def test_backend_names_are_the_registry():
    assert set(backends.NAMES) == {"auto", *backends.BACKENDS}


def test_build_info_says_what_is_there():
    info = sa.build_info()
    assert set(info) >= {"extension", "torch_runtime"}
    if info["extension"]:
        assert info["torch_version"] in info["torch_runtime"]
        assert isinstance(info["cpu_kernels"], list) and isinstance(info["cuda_kernels"], list)
        if info["with_cuda"]:
            assert info["cuda_archs"] and info["cuda_version"]
        assert info["cpu_kernel_registered"] == ("simplicial_attn::fused_fwd" in info["cpu_kernels"])
