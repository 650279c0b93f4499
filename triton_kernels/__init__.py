"""Triton backend of simplicial-attn: `fwd` and `bwd` with the package's fixed interface.

    fwd(q, k1, k2, v1, v2, w1, w2, causal, scale) -> (out, lse)
    bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale) -> (dq, dk1, dk2, dv1, dv2)

Kernels: fwd.py (forward), bwd.py (Delta preprocess and launcher), bwd_dq.py, bwd_dkv1.py,
bwd_dkv2.py (the three atomic-free gradient kernels); configs.py holds the per-arch launch
configs, checked without a GPU by bench/kernel_report.py. Under TRITON_INTERPRET=1 (set before
triton is imported) CPU tensors are accepted. scores_softmax.py holds the separate kernels of
the unfused path (trilinear scores, windowed softmax).
"""

from ._common import is_interpreting
from .bwd import bwd
from .fwd import fwd

__all__ = ["bwd", "fwd", "is_interpreting"]
