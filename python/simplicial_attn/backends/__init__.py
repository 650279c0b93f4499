"""Backend choice, in one place.

Every backend implements the same three functions (reference.py is the spec); `prob` is the
call's `Problem` (problem.py: windows, causal, scale, logits form, sequence layout, cache):

    fwd(q, k1, k2, v1, v2, prob) -> (out, lse, lse_lo)
    bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob) -> (dq, dk1, dk2, dv1, dv2)
    decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob) -> (out, lse)

    batched   q [B, N, Hq, D], k1..v2 [B, N, Hkv, D]; lse, lse_lo [B, Hq, N]
    packed    prob.cu_seqlens: q [1, T, Hq, D], k1..v2 [1, T, Hkv, D]; lse, lse_lo [1, Hq, T]
    decode    q [B, Nq, Hq, D]; k1/v1 caches [B, C1, Hkv, D], k2/v2 caches [B, C2, Hkv, D], already
              holding the new tokens; prob.cache_seqlens [B]; out like q, lse [B, Hq, Nq]

lse is the natural-log normaliser and lse_lo its rounding residual (README "Numerics"), both in the
compute dtype (float32; float64 for float64 inputs). Each backend answers
`not_supported_reasons(...)` with a list of plain sentences (empty: it can serve the call).
`"auto"` takes the first backend of `AUTO_ORDER[device_class(device)]` that can serve; an explicit
backend that cannot serve raises `BackendNotSupported` with its reasons, never a silent
fallback. `SIMPLICIAL_ATTN_BACKEND` overrides `"auto"` (and only `"auto"`).

What a backend can serve is decided from plain values (device type, dtype, sizes), and the
expensive facts (is the extension built, is triton importable) are read once at import, so
torch.compile traces this module without graph breaks.
"""

import importlib.util
import os
import sys

import torch

from . import extension, reference

ENV_VAR = "SIMPLICIAL_ATTN_BACKEND"

# The choice table: which backend "auto" tries first, per device class (`device_class`). Each
# GPU backend is the fast path where its tools fit the hardware (issue 23): on Ampere and Ada
# (sm_80 / 86 / 87 / 89) the CUDA C++ kernels, whose hand-scheduled mma.sync loops are the native
# tensor-core path there; on Hopper and Blackwell (sm_90, sm_100, sm_120) and anything newer,
# Triton, whose compiler emits wgmma / tcgen05, TMA and the per-arch tiles of configs.py (the
# CUDA C++ build carries sm_90 PTX only beyond sm_86's SASS).
AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cuda:sm8x": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
DEFAULT_ORDER = ("reference",)

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_HAS_CPU_KERNEL = extension.has_kernel("cpu")
_HAS_CUDA_KERNEL = extension.has_kernel("cuda")
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendNotSupported(ValueError):
    """An explicitly requested backend cannot serve this call; the message lists why."""


class Backend:
    name = ""

    def not_supported_reasons(self, device_type, dtype):
        raise NotImplementedError

    def fwd(self, q, k1, k2, v1, v2, prob):
        raise NotImplementedError

    def bwd(self, dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob):
        raise NotImplementedError

    def decode(self, q, k1_cache, k2_cache, v1_cache, v2_cache, prob):
        raise NotImplementedError


class ReferenceBackend(Backend):
    """Pure PyTorch (reference.py): every device and floating dtype; the executable spec."""

    name = "reference"

    def not_supported_reasons(self, device_type, dtype):
        return []

    def fwd(self, *args):
        return reference.fwd(*args)

    def bwd(self, *args):
        return reference.bwd(*args)

    def decode(self, *args):
        return reference.decode(*args)


class _ExtensionBackend(Backend):
    """A backend served by the C++ kernels of `simplicial_attn._C` for one device type."""

    device_type = ""
    dtypes = ()

    def not_supported_reasons(self, device_type, dtype):
        return self.reasons_with(self._has_kernel(), device_type, dtype)

    def reasons_with(self, has_kernels, device_type, dtype, ops=""):
        """The reasons for C++ kernels of this device, given whether the build has those of the
        ops in question (`ops` names them in the message; the fused op when empty)."""
        reasons = []
        if not extension.extension_loaded():
            reasons.append(
                f"the C++ extension simplicial_attn._C is not built ({extension.build_info()['import_error']})"
            )
        elif not has_kernels:
            reasons.append(f"this build of simplicial_attn._C has no {self.device_type.upper()} kernels{ops}")
        if device_type != self.device_type:
            reasons.append(f"it needs {self.device_type} tensors, got {device_type} tensors")
        if dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reasons.append(f"it supports dtypes {names}, got {str(dtype).removeprefix('torch.')}")
        return reasons

    def _has_kernel(self):
        raise NotImplementedError

    def fwd(self, q, k1, k2, v1, v2, prob):
        return torch.ops.simplicial_attn.fused_fwd(q, k1, k2, v1, v2, *prob.fused_args())

    def bwd(self, dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob):
        return torch.ops.simplicial_attn.fused_bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, *prob.fused_args())

    def decode(self, q, k1_cache, k2_cache, v1_cache, v2_cache, prob):
        return torch.ops.simplicial_attn.fused_decode(q, k1_cache, k2_cache, v1_cache, v2_cache, *prob.decode_args())


class CpuBackend(_ExtensionBackend):
    """C++ CPU kernels (csrc/cpu/)."""

    name = "cpu"
    device_type = "cpu"
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def _has_kernel(self):
        return _HAS_CPU_KERNEL


class CudaBackend(_ExtensionBackend):
    """CUDA C++ kernels (csrc/cuda/)."""

    name = "cuda"
    device_type = "cuda"
    dtypes = _GPU_DTYPES

    def _has_kernel(self):
        return _HAS_CUDA_KERNEL


class TritonBackend(Backend):
    """Triton kernels (triton_kernels/). Under TRITON_INTERPRET=1 it also takes CPU tensors."""

    name = "triton"

    def not_supported_reasons(self, device_type, dtype):
        reasons = []
        if not _HAS_TRITON:
            reasons.append("triton is not installed (pip install triton)")
        interpreting = _triton_interpreting()
        if device_type != "cuda" and not (device_type == "cpu" and interpreting):
            reasons.append(f"it needs cuda tensors (or cpu tensors with TRITON_INTERPRET=1), got {device_type} tensors")
        if dtype not in _GPU_DTYPES:
            reasons.append(f"it supports dtypes float16, bfloat16, float32, got {str(dtype).removeprefix('torch.')}")
        return reasons

    def fwd(self, *args):
        from .. import triton_kernels

        return triton_kernels.fwd(*args)

    def bwd(self, *args):
        from .. import triton_kernels

        return triton_kernels.bwd(*args)

    def decode(self, *args):
        from .. import triton_kernels

        return triton_kernels.decode(*args)


def _triton_interpreting():
    """Whether the Triton kernels run through the interpreter. Triton reads TRITON_INTERPRET
    when the kernels are defined, so once they are imported their own answer is the truth."""
    kernels = sys.modules.get("simplicial_attn.triton_kernels")
    if kernels is not None:
        return kernels.is_interpreting()
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


BACKENDS = {b.name: b for b in (CudaBackend(), TritonBackend(), CpuBackend(), ReferenceBackend())}
NAMES = ("auto", "cuda", "triton", "cpu", "reference")  # "auto" and every key of BACKENDS (tests/test_op.py)


def check_name(backend):
    """A backend argument: one of NAMES (TypeError for a non-str, ValueError for an unknown name)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {', '.join(NAMES)}; got {type(backend).__name__}")
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {', '.join(NAMES)}; got {backend!r}")


def get(name):
    return BACKENDS[name]


def _reasons(name, device_type, dtype):
    return BACKENDS[name].not_supported_reasons(device_type, dtype)


# CUDA capability per device index, asked once per device (not at import: that would
# initialise CUDA in every process that imports the package).
_CAPABILITY = {}


def _device_type(device):
    """The type of `device`: a torch.device, or already a device type str."""
    return device if isinstance(device, str) else device.type


def device_class(device):
    """The key of `device` (a torch.device, or a device type str) in AUTO_ORDER: its type, or
    "cuda:sm8x" for an sm_80-class GPU (capability 8.x)."""
    if isinstance(device, str) or device.type != "cuda":
        return _device_type(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return "cuda:sm8x" if _CAPABILITY[index][0] == 8 else "cuda"


def select(requested, device, dtype, reasons=_reasons):
    """The backend name to run: `requested` itself if it can serve, else an error; or for
    "auto" (after the SIMPLICIAL_ATTN_BACKEND override) the first that can serve in the choice
    table of the device's class (`device_class`; `device` a torch.device or a device type str).

    `reasons(name, device_type, dtype)` says why a backend cannot serve; ops other than the
    fused attention (scores.py) pass their own."""
    check_name(requested)
    device_type = _device_type(device)
    if requested == "auto":
        override = os.environ.get(ENV_VAR, "auto")
        if override not in NAMES:
            raise ValueError(f"{ENV_VAR} must be one of {', '.join(NAMES)}; got {override!r}")
        requested = override
    if requested != "auto":
        why = reasons(requested, device_type, dtype)
        if why:
            raise BackendNotSupported(f"backend={requested!r} cannot serve this call: " + "; ".join(why))
        return requested
    order = AUTO_ORDER.get(device_class(device), DEFAULT_ORDER)
    report = []
    for name in order:
        why = reasons(name, device_type, dtype)
        if not why:
            return name
        report.append(f"{name}: " + "; ".join(why))
    raise BackendNotSupported("no backend can serve this call:\n  " + "\n  ".join(report))
