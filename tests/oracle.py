"""Dense float64 oracle: CONTRACT §1 and §6-§8 written out over the whole (i, j, k) cube.

O(N^3) time and memory, so only for the small shapes of the tests. Independent of the
package on purpose: it shares no code with the reference backend, so a bug there cannot hide
here. `w=None` means unbounded. The determinant logits (§8) are computed as the triple product
q . (k1 x k2) of each 3-channel chunk with torch.linalg.cross; packed sequences (§6) as one call
per sequence; decoding (§7) as rows of the full forward.
"""

import torch


def window_mask(n, w, causal, device=None):
    """[N, N] bool: mask[i, j] is True when j is in the window of query i."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if w is None:
        return (j <= i) if causal else torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        return (j > i - w) & (j <= i)
    lo = i - w // 2
    return (j >= lo) & (j <= lo + w - 1)


def _expand_kv(x, hq):
    """[B, N, Hkv, D] -> [B, Hq, N, D] float64, each kv head repeated for its query group."""
    b, n, hkv, d = x.shape
    return x.double().permute(0, 2, 1, 3).repeat_interleave(hq // hkv, dim=1)


def _logits(qh, k1h, k2h, logits):
    """[B, H, N, N, N] raw logits (before scale) of q, k1, k2 in [B, H, N, D] layout."""
    if logits == "trilinear":
        return torch.einsum("bhid,bhjd,bhkd->bhijk", qh, k1h, k2h)
    b, h, n, d = qh.shape
    assert logits == "determinant" and d % 3 == 0
    chunks = [t.reshape(b, h, n, d // 3, 3) for t in (qh, k1h, k2h)]
    cross = torch.linalg.cross(chunks[1][:, :, :, None], chunks[2][:, :, None, :], dim=-1)  # [B,H,Nj,Nk,M,3]
    return torch.einsum("bhimc,bhjkmc->bhijk", chunks[0], cross)


def _forward(q, k1, k2, v1, v2, w1, w2, causal, scale, logits="trilinear"):
    b, n, hq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    qh = q.double().permute(0, 2, 1, 3)
    k1h, k2h, v1h, v2h = (_expand_kv(t, hq) for t in (k1, k2, v1, v2))
    logits = scale * _logits(qh, k1h, k2h, logits)
    mask = window_mask(n, w1, causal, q.device)[:, :, None] & window_mask(n, w2, causal, q.device)[:, None, :]
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits.flatten(-2), dim=-1)  # [B, Hq, N]
    p = torch.exp(logits - lse[..., None, None])
    out = torch.einsum("bhijk,bhjd,bhkd->bhid", p, v1h, v2h)
    return out.permute(0, 2, 1, 3), lse


def oracle_fwd(q, k1, k2, v1, v2, w1, w2, causal=True, scale=None, logits="trilinear"):
    """Returns (out [B, N, Hq, D], lse [B, Hq, N]) in float64."""
    with torch.no_grad():
        return _forward(q, k1, k2, v1, v2, w1, w2, causal, scale, logits)


def oracle_bwd(dout, q, k1, k2, v1, v2, w1, w2, causal=True, scale=None, logits="trilinear"):
    """Returns (dq, dk1, dk2, dv1, dv2) in float64, by autograd through the dense float64 cube.

    The explicit backward formulas live in the backends; the oracle checks them against
    autograd of the plain forward, which is a different derivation.
    """
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k1, k2, v1, v2)]
    with torch.enable_grad():
        out, _ = _forward(*leaves, w1, w2, causal, scale, logits)
        grads = torch.autograd.grad(out, leaves, dout.double())
    return tuple(g.detach() for g in grads)


def _sequences(cu_seqlens):
    cu = [int(x) for x in cu_seqlens.tolist()]
    return list(zip(cu[:-1], cu[1:], strict=True))


def oracle_varlen_fwd(q, k1, k2, v1, v2, cu_seqlens, w1, w2, causal=True, scale=None, logits="trilinear"):
    """Packed q [T, Hq, D] etc.: (out [T, Hq, D], lse [Hq, T]) from one dense call per sequence."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.zeros(q.shape[1], q.shape[0], dtype=torch.float64)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    for s, e in _sequences(cu_seqlens):
        if e > s:
            o, o_lse = oracle_fwd(*(t[None, s:e] for t in (q, k1, k2, v1, v2)), w1, w2, causal, scale, logits)
            out[s:e], lse[:, s:e] = o[0], o_lse[0]
    return out, lse


def oracle_varlen_bwd(dout, q, k1, k2, v1, v2, cu_seqlens, w1, w2, causal=True, scale=None, logits="trilinear"):
    """Packed gradients (dq, dk1, dk2, dv1, dv2), each [T, H, D] float64, one call per sequence."""
    grads = [torch.zeros(t.shape, dtype=torch.float64) for t in (q, k1, k2, v1, v2)]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    for s, e in _sequences(cu_seqlens):
        if e > s:
            rows = (t[None, s:e] for t in (dout, q, k1, k2, v1, v2))
            for g, part in zip(grads, oracle_bwd(*rows, w1, w2, causal, scale, logits), strict=True):
                g[s:e] = part[0]
    return tuple(grads)


def oracle_decode(q_all, k1_all, k2_all, v1_all, v2_all, lengths, nq, w1, w2, scale=None, logits="trilinear"):
    """What decoding must return: for each sequence b, rows lengths[b] .. lengths[b] + nq - 1 of
    the causal forward over its first lengths[b] + nq positions of the full [B, N, H, D] tensors.
    Returns (out [B, nq, Hq, D], lse [B, Hq, nq]) in float64."""
    B, _, Hq, D = q_all.shape
    out = torch.zeros(B, nq, Hq, D, dtype=torch.float64)
    lse = torch.zeros(B, Hq, nq, dtype=torch.float64)
    for b, L in enumerate(int(x) for x in lengths):
        prefix = (t[b : b + 1, : L + nq] for t in (q_all, k1_all, k2_all, v1_all, v2_all))
        o, o_lse = oracle_fwd(*prefix, w1, w2, True, scale, logits)
        out[b], lse[b] = o[0, L:], o_lse[0, :, L:]
    return out, lse
