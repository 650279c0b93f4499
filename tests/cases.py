"""The shared case grid, input factory and error measure for every backend's parity tests."""

import dataclasses
import itertools

import torch

from simplicial_attn.problem import window_band

# CONTRACT §5: relative Frobenius error bounds against the float64 oracle.
BOUNDS = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}
TF32_BOUND = 2e-3


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    N: int
    Hq: int
    Hkv: int
    D: int
    w1: int | None
    w2: int | None
    causal: bool = True

    @property
    def id(self):
        w1 = "None" if self.w1 is None else self.w1
        w2 = "None" if self.w2 is None else self.w2
        mode = "causal" if self.causal else "centred"
        return f"B{self.B}-N{self.N}-Hq{self.Hq}-Hkv{self.Hkv}-D{self.D}-w1_{w1}-w2_{w2}-{mode}"


def bands(w1, w2, causal, n=None):
    """The kernel bands (problem.window_band) of windows w1, w2: clipped to sequences of n rows
    when n is given (an unbounded window needs it), else the windows' own bands."""
    return window_band(w1, causal, n), window_band(w2, causal, n)


def make_inputs(case, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    """Fresh random q, k1, k2, v1, v2 (never zeros) in [B, N, H, D] layout."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(case.B, case.N, case.Hq, case.D)] + [(case.B, case.N, case.Hkv, case.D)] * 4
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
        out.append(t.requires_grad_(requires_grad))
    return tuple(out)


def make_dout(case, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(case.B, case.N, case.Hq, case.D, generator=g).to(device=device, dtype=dtype)


def rel_err(x, ref):
    """||x - ref||_F / ||ref||_F in float64 (NaN anywhere makes it NaN, so a bound check fails).

    For an all-zero reference it returns the absolute ||x||_F; the grid avoids such cases
    (w1 = w2 = 1 makes q/k gradients vanish and is tested on its own).
    """
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (x - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _grid():
    # Deliberately awkward: N not a multiple of any block (1, 7, 97), windows larger than N,
    # w = 1, GQA ratios 1, 2, 8, Hkv = 1, D in {16, 40, 64, 128}, B > 1, w2 > 32, None.
    return [
        Case(1, 1, 1, 1, 16, 4, 4),
        Case(2, 7, 2, 1, 16, 3, 5),
        Case(1, 7, 4, 2, 40, 16, 16),  # windows larger than N
        Case(2, 17, 8, 1, 64, 1, 4),  # w1 = 1 (w1 = w2 = 1 has zero q/k grads: see test_reference)
        Case(1, 33, 8, 8, 16, 5, 40),  # w2 > 32
        Case(2, 20, 4, 4, 128, 6, 3),  # D = 128 with B > 1
        Case(1, 97, 2, 2, 64, 12, 9),
        Case(1, 13, 2, 1, 16, None, 4),
        Case(1, 9, 2, 2, 16, None, None),
        Case(2, 7, 2, 1, 16, 3, 5, causal=False),
        Case(1, 19, 8, 1, 40, 6, 4, causal=False),
        Case(1, 23, 2, 2, 16, 1, 64, causal=False),
        Case(1, 11, 4, 2, 64, 8, None, causal=False),
        Case(1, 9, 2, 1, 16, None, None, causal=False),
    ]


CASES_FULL = _grid()
# A cheaper subset for slow paths (the Triton interpreter): still covers B > 1, D = 128,
# w2 > 32, Hkv > 1, GQA 8, w = 1, None, both window modes.
CASES_SMALL = [CASES_FULL[i] for i in (1, 3, 4, 5, 7, 9, 12)]


# ---- backends under test (the public entry points, parametrized) ------------------------------

HAS_GPU = torch.cuda.is_available()


def _backend_skip(name):
    """Why `name` cannot run here (None: it can). Imported late: the package reads TRITON_INTERPRET."""
    import importlib.util

    from simplicial_attn.backends import extension

    if name == "cpu" and not extension.has_kernel("cpu"):
        return "the C++ CPU kernels are not built (simplicial_attn._C has no CPU fused_fwd)"
    if name == "triton" and importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def backend_params(names=("reference", "cpu", "triton", "cuda")):
    """pytest params over backends: "cuda" needs a GPU (marked gpu); "triton" runs through the
    interpreter on CPU tensors without one; "cpu" needs the built extension."""
    import pytest

    params = []
    for name in names:
        marks = [pytest.mark.gpu] if name == "cuda" else []
        reason = _backend_skip(name)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_of(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and HAS_GPU) else "cpu"


def make_packed(lengths, Hq, Hkv, D, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    """Packed q [T, Hq, D], k1, k2, v1, v2 [T, Hkv, D] (fresh random values) and cu_seqlens int32."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    T = sum(lengths)
    tensors = [torch.randn(T, h, D, generator=g).to(device=device, dtype=dtype) for h in (Hq, Hkv, Hkv, Hkv, Hkv)]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    return tuple(t.requires_grad_(requires_grad) for t in tensors), cu
