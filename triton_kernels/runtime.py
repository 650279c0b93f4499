"""Where the Triton kernels run, and what the backend refuses: a leaf module (torch and triton only).

Under TRITON_INTERPRET=1 (read by `@triton.jit` when a kernel is defined) triton runs kernels
through its CPU interpreter and the backend takes CPU tensors; otherwise it needs CUDA tensors.
"""

import contextlib
import os

import torch
import triton

# The opt-in for TF32 tensor cores on float32 inputs (CONTRACT §5: 2e-3 instead of 1e-5).
TF32_ENV = "SIMPLICIAL_ATTN_ALLOW_TF32"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _probe():
    pass


def is_interpreting():
    """True when triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1).

    `@triton.jit` reads the flag when a function is defined, so the type of a function defined
    alongside the kernels is the truth, not today's environment."""
    return not isinstance(_probe, triton.runtime.JITFunction)


def input_precision(dtype, allow_tf32):
    """How tl.dot treats float32 operands: exact-ish IEEE by default, TF32 only when asked for."""
    if dtype == torch.float32 and (allow_tf32 or os.environ.get(TF32_ENV, "0") == "1"):
        return "tf32"
    return "ieee"


def device_guard(t):
    """Launch on t's GPU (not the current one); nothing to do for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_device(*tensors):
    """A clear error for what no Triton kernel here runs: other dtypes, or CPU tensors unless interpreting."""
    for t in tensors:
        if t.dtype not in DTYPES:
            raise TypeError(f"the triton backend supports float16, bfloat16 and float32; got {t.dtype}")
        if t.device.type != "cuda" and not is_interpreting():
            raise ValueError(
                f"the triton backend needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1); "
                f"got {t.device.type} tensors"
            )
