"""The public function: checks the argument types the op's schema needs, then calls the op
(library.py), which checks the values, turns the windows into bands and runs the backend."""

from . import checks, library


def two_simplicial_attention(
    q,
    k1,
    k2,
    v1,
    v2,
    w1=512,
    w2=32,
    *,
    causal=True,
    scale=None,
    logits="trilinear",
    return_lse=False,
    backend="auto",
):
    r"""2-simplicial (trilinear) sliding-window attention.

    For each query i, one softmax over the pairs (j, k) of two windows:

        A[i,j,k] = scale * sum_d q[i,d] k1[j,d] k2[k,d]       j in J(i), k in K(i)
        out[i]   = sum_{j,k} softmax_{(j,k)}(A[i])[j,k] * (v1[j] * v2[k])

    Windows (w1 over j, w2 over k; None = unbounded on the allowed side):

        causal=True:   J(i) = (i - w1, i]           causal=False:  J(i) = [i - w1//2, i - w1//2 + w1)

    Args:
        q: (batch_size, seqlen, nheads_q, headdim).
        k1, k2, v1, v2: (batch_size, seqlen, nheads_kv, headdim), nheads_q % nheads_kv == 0
            (grouped-query: query head h reads kv head h // (nheads_q // nheads_kv)).
            Any strides; float16, bfloat16, float32 (float64 on the cpu/reference backends).
        w1, w2: window sizes (int >= 1) or None.
        causal: the paper's trailing windows (True) or centred windows (False).
        scale: logit scale, default headdim ** -0.5.
        logits: "trilinear" (above) or "determinant": per chunk of 3 channels, the determinant
            of the 3x3 matrix [q_i; k1_j; k2_k] (Roy et al. 2025, §5; CONTRACT §8), invariant
            under one rotation of all three chunks; needs headdim % 3 == 0.
        return_lse: also return lse (batch_size, nheads_q, seqlen), the natural-log
            normaliser, float32 (float64 for float64 inputs); not differentiable.
        backend: "auto", "cuda", "triton", "cpu" or "reference". "auto" picks the fastest
            that can serve the call (SIMPLICIAL_ATTN_BACKEND overrides it); an explicit
            backend that cannot serve raises BackendNotSupported with the reasons.

    Returns:
        out (batch_size, seqlen, nheads_q, headdim) in q's dtype, or (out, lse).
    Differentiable in all five inputs (reverse mode; forward-mode AD raises NotImplementedError).
    """
    checks.check_attention_types((q, k1, k2, v1, v2), w1, w2, causal, scale, logits, backend)
    checks.check_flag("return_lse", return_lse)
    checks.check_no_forward_ad(q, k1, k2, v1, v2)
    w1, w2, scale = checks.op_window(w1), checks.op_window(w2), checks.op_scale(scale)
    out, lse, _ = library.attention(q, k1, k2, v1, v2, None, None, w1, w2, causal, scale, logits, backend)
    return (out, lse) if return_lse else out
