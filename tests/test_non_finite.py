"""CONTRACT §4: non-finite inputs propagate like the reference does, in every backend.

One NaN, +Inf or -Inf is put into one input, and out, lse and all five gradients are compared
with the reference backend, which gathers each query's windows and so propagates exactly per
window. The CPU backend must give exactly the reference's set of non-finite elements. The
tiled GPU kernels (Triton, CUDA C++) may give more: inside a tile, a row outside a query's
window still enters the tensor-core product with weight 0, and 0 * NaN is NaN (as in
flash-attention; the README says so). They must never give fewer, since a NaN turned into a
finite number is a silently wrong result. Elements finite in both must still match.

Without a GPU, Triton runs through the interpreter and CUDA C++ through tests/cuda_emulator.py.
"""

import cuda_emulator as emu
import pytest
import torch

import simplicial_attn as sa
from simplicial_attn.backends import extension

from cases import BOUNDS, Case, make_dout, make_inputs

# The interpreter and numpy warn about the NaN arithmetic this file provokes on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"
NAMES = ("q", "k1", "k2", "v1", "v2")
OUTPUTS = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
# Two kv heads, so a bad kv element must stay in its own head; N = 40 spans several tiles.
CASES = [Case(1, 40, 4, 2, 16, 8, 4, causal=True), Case(1, 40, 4, 2, 16, 7, 5, causal=False)]
WHERE = (0, 20, 1, 3)  # batch, position, head, channel of the bad element


def _bad_inputs(case, name, value):
    inputs = [t.clone() for t in make_inputs(case, device=DEVICE)]
    inputs[NAMES.index(name)][WHERE] = VALUES[value]
    return inputs


def _through_api(backend, case, inputs, dout):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out, lse = sa.two_simplicial_attention(
        *leaves, w1=case.w1, w2=case.w2, causal=case.causal, return_lse=True, backend=backend
    )
    return (out, lse, *torch.autograd.grad(out, leaves, dout))


def _emulated(case, inputs, dout):
    scale = case.D**-0.5
    out, lse = emu.fwd(*inputs, case.w1, case.w2, case.causal, scale)
    return (out, lse, *emu.bwd(dout, *inputs, out, lse, case.w1, case.w2, case.causal, scale))


def _compare(got, ref, exact):
    """Per output: no element the reference makes non-finite is finite here (exact: the same
    set), and the elements finite in both agree within the float32 bound."""
    problems = {}
    for name, g, r in zip(OUTPUTS, got, ref, strict=True):
        g, r = g.detach().double().cpu(), r.detach().double().cpu()
        g_bad, r_bad = ~torch.isfinite(g), ~torch.isfinite(r)
        assert r_bad.any() or name != "out", "the reference did not propagate at all"
        hidden = int((r_bad & ~g_bad).sum())
        extra = int((g_bad & ~r_bad).sum())
        if hidden or (exact and extra):
            problems[name] = f"{hidden} non-finite reference elements finite here, {extra} extra"
            continue
        both = ~g_bad & ~r_bad
        err = ((g - r)[both].norm() / r[both].norm()).item()
        if not err <= BOUNDS[torch.float32]:
            problems[name] = f"finite elements off by {err:.2e}"
    assert not problems, problems


def _backends():
    out = []
    if extension.has_kernel("cpu"):
        out.append(pytest.param("cpu", True, id="cpu"))
    # On a GPU machine the Triton case runs the compiled kernels, so `pytest -m gpu` takes it.
    out.append(pytest.param("triton", False, id="triton", marks=[pytest.mark.gpu] if HAS_GPU else []))
    out.append(pytest.param("cuda", False, id="cuda", marks=pytest.mark.gpu))
    return out


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "causal" if c.causal else "centred")
@pytest.mark.parametrize(("backend", "exact"), _backends())
def test_never_hides_a_non_finite_input(backend, exact, case, name, value):
    if backend == "cpu" and HAS_GPU:
        pytest.skip("the cpu backend takes CPU tensors; this run uses the GPU")
    if backend == "cuda" and not extension.has_kernel("cuda"):
        pytest.skip(f"the CUDA kernels are not built ({extension.build_info()})")
    inputs = _bad_inputs(case, name, value)
    dout = make_dout(case, device=DEVICE)
    ref = _through_api("reference", case, inputs, dout)
    _compare(_through_api(backend, case, inputs, dout), ref, exact and value == "nan")


@pytest.mark.skipif(emu.unavailable_reason() is not None, reason=f"{emu.unavailable_reason()}")
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "causal" if c.causal else "centred")
def test_cuda_emulated_never_hides_a_non_finite_input(case, name, value):
    inputs = [t.cpu() for t in _bad_inputs(case, name, value)]
    dout = make_dout(case)
    ref = _through_api("reference", case, inputs, dout)
    _compare(_emulated(case, inputs, dout), ref, exact=False)
