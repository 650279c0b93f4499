r"""Decoding with a rolling cache (CONTRACT §7): the entry point (the per-layer cache object that
keeps the rings and the lengths is nn/cache.py's SimplicialCache).

A query at position P needs k1/v1 at (P - w1, P] and k2/v2 at (P - w2, P] only, so each cache is a
ring buffer: position p lives in slot p % C. With C1 >= w1 + Nq - 1 and C2 >= w2 + Nq - 1 slots
(Nq new tokens per call) a generation of any length runs in constant memory.

    ring of C = 6 slots, w = 4, after 9 tokens (positions 0..8):
    slot      0 1 2 3 4 5
    position  6 7 8 3 4 5        the next token (position 9) overwrites slot 3 (position 3),
                                 which no window of position 9 (6..9) needs

A cache at least as long as the sequence is the linear special case (and the only one a
`None` window allows).
"""

import torch

from . import checks, library


def two_simplicial_attention_with_kvcache(
    q,
    k1_cache,
    k2_cache,
    v1_cache,
    v2_cache,
    cache_seqlens,
    k1=None,
    k2=None,
    v1=None,
    v2=None,
    w1=512,
    w2=32,
    *,
    scale=None,
    logits="trilinear",
    return_lse=False,
    backend="auto",
):
    """Attention of Nq new tokens against ring-buffer caches, as flash-attn's `flash_attn_with_kvcache`.

    Causal windows only. The new tokens of sequence b sit at positions L_b .. L_b + Nq - 1,
    L_b = cache_seqlens[b]. Given k1 .. v2, they are first written into their slots (in place:
    position p to slot p % C), then every new token attends; the result equals rows
    L_b .. L_b + Nq - 1 of `two_simplicial_attention` over the whole sequence so far.
    cache_seqlens is not advanced (the caller owns it; `SimplicialCache` does it for you).

    Args:
        q: (batch_size, nq, nheads_q, headdim): the new tokens' queries.
        k1_cache, v1_cache: (batch_size, c1, nheads_kv, headdim); k2_cache, v2_cache:
            (batch_size, c2, nheads_kv, headdim). q's dtype and device.
        cache_seqlens: int32 (batch_size,): tokens of each sequence already in the cache.
        k1, k2, v1, v2: (batch_size, nq, nheads_kv, headdim) or None (already in the cache).
        w1, w2: windows (int >= 1) or None (the whole sequence: needs a linear cache).
            A ring needs c1 >= w1 + nq - 1 and c2 >= w2 + nq - 1 slots; a smaller cache is
            accepted only while no sequence has wrapped around it.
        scale, logits, backend: as in `two_simplicial_attention`.
        return_lse: also return lse (batch_size, nheads_q, nq), float32 natural log.

    Returns:
        out (batch_size, nq, nheads_q, headdim) in q's dtype, or (out, lse). Not differentiable.
    """
    tensors = (q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens)
    checks.check_cache_types(tensors, (k1, k2, v1, v2), w1, w2, scale, logits, backend)
    checks.check_flag("return_lse", return_lse)
    w1, w2, scale = checks.op_window(w1), checks.op_window(w2), checks.op_scale(scale)
    with torch.no_grad():  # inference: no autograd graph (a mutating op has no gradient formula)
        out, lse = library.attention_with_kvcache(
            q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, k1, k2, v1, v2, w1, w2, scale, logits, backend
        )
    return (out, lse) if return_lse else out
