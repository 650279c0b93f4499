r"""Packed variable-length sequences (CONTRACT §6): many sequences in one [T, H, D] tensor.

    cu_seqlens = [0, 3, 3, 7]          three sequences: rows 0-2, none, rows 3-6
    row        0 1 2 | 3 4 5 6
    causal w=3 window of row 4:  rows 3 4 (never 2: windows stop at their sequence's start)

Each sequence's output and gradients equal those of a separate `two_simplicial_attention` call
on its rows alone. Every backend runs the packing natively (per-row window bounds in the
kernels): nothing is padded to `max_seqlen` and no sequence is copied out.
"""

import torch

from . import _ops, _validate, backends
from .problem import window_band


def two_simplicial_attention_varlen(
    q,
    k1,
    k2,
    v1,
    v2,
    cu_seqlens,
    max_seqlen=None,
    w1=512,
    w2=32,
    *,
    causal=True,
    scale=None,
    logits="trilinear",
    return_lse=False,
    backend="auto",
):
    """2-simplicial attention over packed sequences, as flash-attn's `flash_attn_varlen_func`.

    Args:
        q: (total_tokens, nheads_q, headdim).
        k1, k2, v1, v2: (total_tokens, nheads_kv, headdim), nheads_q % nheads_kv == 0.
        cu_seqlens: int32 (or int64) (num_seqs + 1,), on q's device: 0 = cu[0] <= cu[1] <= ...
            <= cu[num_seqs] = total_tokens; sequence s is rows cu[s] .. cu[s+1] - 1. Empty
            sequences are allowed. A tensor input: a new packing does not recompile under
            torch.compile.
        max_seqlen: an int >= every sequence length (a launch hint, as in flash-attn), or None to
            compute it from cu_seqlens (one device-to-host copy on a GPU; pass it inside a CUDA
            graph). When given it is checked against cu_seqlens outside CUDA graph capture.
        w1, w2, causal, scale, logits, backend: as in `two_simplicial_attention`; windows are
            clipped to each row's own sequence.
        return_lse: also return lse (nheads_q, total_tokens), float32 natural log.

    Returns:
        out (total_tokens, nheads_q, headdim) in q's dtype, or (out, lse). Differentiable in q,
        k1, k2, v1, v2.
    """
    _validate.check_call((q, k1, k2, v1, v2), w1, w2, causal, scale, logits, packed=True, return_lse=return_lse)
    cu_seqlens, max_seqlen = _packing(cu_seqlens, q, max_seqlen)
    name = backends.select(backend, q.device.type, q.dtype)
    scale = q.shape[2] ** -0.5 if scale is None else float(scale)
    band1, band2 = window_band(w1, causal, max_seqlen), window_band(w2, causal, max_seqlen)
    packed = (t.unsqueeze(0) for t in (q, k1, k2, v1, v2))  # [1, T, H, D]: the batched layout with B = 1
    out, lse, _ = _ops.attention(*packed, cu_seqlens, max_seqlen, *band1, *band2, scale, logits, name)
    return (out[0], lse[0]) if return_lse else out[0]


def _packing(cu_seqlens, q, max_seqlen):
    """cu_seqlens and max_seqlen for the op, which checks both against each other. A missing
    max_seqlen is computed from cu_seqlens; under torch.compile, where values cannot be read while
    tracing, it becomes T (a valid bound: the grids then cover T rows per sequence, most empty)."""
    _validate.check_cu_seqlens_tensor(cu_seqlens, q.device)
    if max_seqlen is not None:
        _validate.check_max_seqlen(max_seqlen)
        return cu_seqlens, int(max_seqlen)
    if torch.compiler.is_compiling() or not _validate.values_readable(cu_seqlens):
        return cu_seqlens, q.shape[0]
    return cu_seqlens, max(0, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())) if cu_seqlens.numel() > 1 else 0
