"""Loading the compiled extension `simplicial_attn._C`, which may not have been built.

Importing it registers the C++ kernels with the dispatcher (`torch.ops.simplicial_attn.fused_*`
on CPU, and on CUDA when the CUDA sources were built). Everything else in the package works
without it; `build_info()` says what is there and why a backend may be missing.
"""

import torch

try:
    from .. import _C  # noqa: F401  (registers the kernels)

    _IMPORT_ERROR = None
except ImportError as exc:  # not built (pure-Python install) or built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def extension_loaded():
    return _C is not None


def has_kernel(device_type, ops=("fused_fwd",)):
    """True when the extension registered every op of `ops` for this device type ("cpu" / "cuda")."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"simplicial_attn::{op}", key) for op in ops)
    except RuntimeError:  # an extension built before one of these schemas existed
        return False


def build_info():
    """What the installed extension holds, as a dict (see `_C.build_info` in csrc/bindings.cpp)."""
    if _C is None:
        return {"extension": False, "import_error": _IMPORT_ERROR, "torch_runtime": torch.__version__}
    info = dict(_C.build_info())
    info["extension"] = True
    info["torch_runtime"] = torch.__version__
    info["cpu_kernel_registered"] = has_kernel("cpu")
    info["cuda_kernel_registered"] = has_kernel("cuda")
    return info
