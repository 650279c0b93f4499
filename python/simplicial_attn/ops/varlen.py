r"""Packed variable-length sequences (CONTRACT §6): many sequences in one [T, H, D] tensor.

    cu_seqlens = [0, 3, 3, 7]          three sequences: rows 0-2, none, rows 3-6
    row        0 1 2 | 3 4 5 6
    causal w=3 window of row 4:  rows 3 4 (never 2: windows stop at their sequence's start)

Each sequence's output and gradients equal those of a separate `two_simplicial_attention` call
on its rows alone. Every backend runs the packing natively (per-row window bounds in the
kernels): nothing is padded to `max_seqlen` and no sequence is copied out.
"""

from . import checks, library


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
        max_seqlen: an int >= every sequence length (a hint, as in flash-attn), or None. The
            work and memory depend on the sequences themselves, read from cu_seqlens (one
            device-to-host copy on a GPU), never on max_seqlen; inside a CUDA graph, where they
            cannot be read, max_seqlen (or T) bounds the launch grids. When given it is checked
            against cu_seqlens outside CUDA graph capture.
        w1, w2, causal, scale, logits, backend: as in `two_simplicial_attention`; windows are
            clipped to each row's own sequence.
        return_lse: also return lse (nheads_q, total_tokens), float32 natural log.

    Returns:
        out (total_tokens, nheads_q, headdim) in q's dtype, or (out, lse). Differentiable in q,
        k1, k2, v1, v2.
    """
    checks.check_attention_types((q, k1, k2, v1, v2), w1, w2, causal, scale, logits, backend)
    checks.check_tensor_type("cu_seqlens", cu_seqlens)
    checks.check_max_seqlen_type(max_seqlen)
    checks.check_flag("return_lse", return_lse)
    checks.check_no_forward_ad(q, k1, k2, v1, v2)
    w1, w2, scale = checks.op_window(w1), checks.op_window(w2), checks.op_scale(scale)
    max_seqlen = None if max_seqlen is None else int(max_seqlen)
    packed = (t.unsqueeze(0) for t in (q, k1, k2, v1, v2))  # [1, T, H, D]: the batched layout with B = 1
    out, lse, _ = library.attention(*packed, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend)
    return (out[0], lse[0]) if return_lse else out[0]
