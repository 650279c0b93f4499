"""Triton backend of simplicial-attn: `fwd`, `bwd` and `decode` with the package's backend interface
(simplicial_attn/backends/__init__.py; `prob` is the call's Problem, simplicial_attn/problem.py).

    fwd(q, k1, k2, v1, v2, prob) -> (out, lse, lse_lo)
    bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob) -> (dq, dk1, dk2, dv1, dv2)
    decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob) -> (out, lse)

Batched and packed (prob.cu_seqlens) layouts, trilinear and determinant logits. Kernels:
fwd.py (forward), bwd.py (Delta preprocess and launcher), bwd_dq.py, bwd_dkv1.py, bwd_dkv2.py
(the three atomic-free gradient kernels), decode.py (split-window decoding and its combine);
_common.py the pieces they share; configs.py the per-arch launch configs, checked without a
GPU by bench/verify/kernel_report.py; paths.py the interpreter's path counters. Under
TRITON_INTERPRET=1 (set before triton is imported) CPU tensors are accepted. scores_softmax.py
holds the separate kernels of the unfused path (scores, windowed softmax).
"""

from ._common import is_interpreting
from .bwd import bwd
from .decode import decode
from .fwd import fwd

__all__ = ["bwd", "decode", "fwd", "is_interpreting"]
