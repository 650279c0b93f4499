"""Dense float64 oracle: CONTRACT §1 written out over the whole (i, j, k) cube.

O(N^3) time and memory, so only for the small shapes of the tests. Independent of the
package on purpose: it shares no code with the reference backend, so a bug there cannot hide
here. `w=None` means unbounded.
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


def _forward(q, k1, k2, v1, v2, w1, w2, causal, scale):
    b, n, hq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    qh = q.double().permute(0, 2, 1, 3)
    k1h, k2h, v1h, v2h = (_expand_kv(t, hq) for t in (k1, k2, v1, v2))
    logits = scale * torch.einsum("bhid,bhjd,bhkd->bhijk", qh, k1h, k2h)
    mask = window_mask(n, w1, causal, q.device)[:, :, None] & window_mask(n, w2, causal, q.device)[:, None, :]
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits.flatten(-2), dim=-1)  # [B, Hq, N]
    p = torch.exp(logits - lse[..., None, None])
    out = torch.einsum("bhijk,bhjd,bhkd->bhid", p, v1h, v2h)
    return out.permute(0, 2, 1, 3), lse


def oracle_fwd(q, k1, k2, v1, v2, w1, w2, causal=True, scale=None):
    """Returns (out [B, N, Hq, D], lse [B, Hq, N]) in float64."""
    with torch.no_grad():
        return _forward(q, k1, k2, v1, v2, w1, w2, causal, scale)


def oracle_bwd(dout, q, k1, k2, v1, v2, w1, w2, causal=True, scale=None):
    """Returns (dq, dk1, dk2, dv1, dv2) in float64, by autograd through the dense float64 cube.

    The explicit backward formulas live in the backends; the oracle checks them against
    autograd of the plain forward, which is a different derivation.
    """
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k1, k2, v1, v2)]
    with torch.enable_grad():
        out, _ = _forward(*leaves, w1, w2, causal, scale)
        grads = torch.autograd.grad(out, leaves, dout.double())
    return tuple(g.detach() for g in grads)
