"""Triton backend of simplicial-attn: `fwd`, `bwd` and `decode` with the package's backend interface
(simplicial_attn/backends/__init__.py; `prob` is the call's Problem, simplicial_attn/problem.py).

    fwd(q, k1, k2, v1, v2, prob) -> (out, lse, lse_lo)
    bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob) -> (dq, dk1, dk2, dv1, dv2)
    decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob) -> (out, lse)

Batched and packed (prob.cu_seqlens) layouts, trilinear and determinant logits. Under
TRITON_INTERPRET=1 (set before triton is imported) CPU tensors are accepted. The modules:

    launch.py     the three launchers above (host code); host.py what they share
    fwd.py, bwd_delta.py, bwd_dqkv2.py, bwd_dkv1.py, decode.py     the kernels
    tiles.py      the tiles programs own: the query tile (fwd, bwd_dqkv2) and the kv tile
                  (bwd_dkv1) prologues, their loop bounds
    seqlen.py     sequence span (batched / packed)        kv.py       row addressing (batched / packed / ring)
    mask.py       window bands                            softmax.py  online softmax, lse, recomputed P
    operand.py    tl.dot wrapper, pair operands and the determinant's cross products
    coverage.py   the interpreter's path counters        runtime.py  interpreter probe, device checks
    configs.py    per-arch launch configs, checked without a GPU by bench/verify/kernel_report.py
    scores_softmax.py   the separate kernels of the unfused path (scores, windowed softmax)
"""

from .launch import bwd, decode, fwd
from .runtime import is_interpreting

__all__ = ["bwd", "decode", "fwd", "is_interpreting"]
