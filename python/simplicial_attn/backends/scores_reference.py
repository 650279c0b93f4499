r"""The unfused path in plain PyTorch: trilinear scores and the windowed softmax (the executable spec).

Layout of the scores, [B, Hq, N, W1, W2]: entry [b, h, i, a, c] is the logit of the pair

    j = j0(i) + a   (k1 position)        k = k0(i) + c   (k2 position)

with each window axis described by `problem.WindowAxis(size, slide, lo)`: start(i) = slide * i - lo.

    w given, causal         size = w, start = i - w + 1        (trailing window, the paper)
    w given, centred        size = w, start = i - w // 2
    w None,  causal         size = N, start = i - N + 1        (same rule with w = N)
    w None,  centred        size = N, start = 0                (absolute: a IS the key position)

The last row is the one choice CONTRACT §3 leaves open: a centred unbounded window covers the
whole sequence for every query, so the axis is the sequence itself (size N, not 2N - 1).
Every slot of an axis is inside the window by construction; a slot is masked (-inf) only when
its position falls outside [0, N). The C++ twin of this table is csrc/include/scores_window.h.

The functions mirror the kernels' interface (see scores.py):

    scores_fwd(q, k1, k2, w1, w2, causal, scale, logits) -> scores [B, Hq, N, W1, W2]
    scores_bwd(dscores, q, k1, k2, w1, w2, causal, scale, logits) -> (dq, dk1, dk2)
    softmax_fwd(scores) -> probs                 (softmax over the last two dims jointly)
    softmax_bwd(dprobs, probs) -> dscores

`logits` is "trilinear" or "determinant": the same signed sum of channel-permuted trilinear
forms as the fused reference (reference.logit_terms, CONTRACT §8), term by term.
Scores are float32 (float64 for float64 inputs). Work runs in query blocks so temporaries stay
near CHUNK_ELEMENTS elements besides the scores themselves.
"""

import torch

from ..problem import compute_dtype, window_axis
from .reference import _permute, _unpermute, logit_terms

CHUNK_ELEMENTS = 1 << 22


def scores_shape(q, k1, w1, w2, causal):
    B, N, Hq, _ = q.shape
    return (B, Hq, N, window_axis(w1, N, causal).size, window_axis(w2, N, causal).size)


def _slots(axis, s, e, n, device):
    """Positions [BQ, W] of queries s..e-1 on `axis`, and which of them lie inside [0, n)."""
    i = torch.arange(s, e, device=device)[:, None]
    pos = axis.start(i) + torch.arange(axis.size, device=device)[None, :]
    return pos, (pos >= 0) & (pos < n)


def _gather(x, pos, valid):
    """x [B, N, Hkv, D] at pos [BQ, W] -> [B, BQ, Hkv, W, D], zero where not valid."""
    B, N, Hkv, D = x.shape
    g = x[:, pos.clamp(0, N - 1).flatten()].view(B, *pos.shape, Hkv, D)
    return torch.where(valid[None, :, :, None, None], g, 0).permute(0, 1, 3, 2, 4)


def _scatter_add(dst, pos, valid, src):
    """dst [B, N, Hkv, D] += src [B, BQ, Hkv, W, D] at positions pos [BQ, W] (valid ones only)."""
    B, BQ, Hkv, W, D = src.shape
    src = torch.where(valid[None, :, None, :, None], src, 0).permute(0, 1, 3, 2, 4)
    dst.index_add_(1, pos.clamp(0, dst.shape[1] - 1).flatten(), src.reshape(B, BQ * W, Hkv, D))


def _query_blocks(B, N, Hq, D, W1, W2, terms=1):
    per_query = B * Hq * max(W1 * max(W2, D), 1) * terms
    bq = max(1, min(N, CHUNK_ELEMENTS // per_query))
    for s in range(0, N, bq):
        yield s, min(s + bq, N)


class _Block:
    """Queries s..e-1: windows gathered per kv head, query heads grouped by the kv head they read."""

    def __init__(self, q, k1, k2, ax1, ax2, s, e):
        B, N, Hq, D = q.shape
        Hkv = k1.shape[2]
        self.j, self.jvalid = _slots(ax1, s, e, N, q.device)
        self.k, self.kvalid = _slots(ax2, s, e, N, q.device)
        self.qb = q[:, s:e].reshape(B, e - s, Hkv, Hq // Hkv, D)
        self.K1 = _gather(k1, self.j, self.jvalid)  # [B, BQ, Hkv, W1, D]
        self.K2 = _gather(k2, self.k, self.kvalid)  # [B, BQ, Hkv, W2, D]
        # [1, BQ, 1, 1, W1, W2]: both positions inside the sequence
        self.mask = (self.jvalid[:, :, None] & self.kvalid[:, None, :])[None, :, None, None]

    def qk1(self, p1=None):
        """q[i] * k1[j] (channels of k1 permuted by p1) for every slot j: [B, BQ, Hkv, G, W1, D]."""
        return self.qb[:, :, :, :, None, :] * _permute(self.K1, p1)[:, :, :, None]


def _to_heads(x):
    """[B, BQ, Hkv, G, W1, W2] -> [B, Hq, BQ, W1, W2]."""
    B, BQ, Hkv, G, W1, W2 = x.shape
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, Hkv * G, BQ, W1, W2)


def _from_heads(x, Hkv):
    """[B, Hq, BQ, W1, W2] -> [B, BQ, Hkv, G, W1, W2]."""
    B, Hq, BQ, W1, W2 = x.shape
    return x.reshape(B, Hkv, Hq // Hkv, BQ, W1, W2).permute(0, 3, 1, 2, 4, 5)


def scores_fwd(q, k1, k2, w1, w2, causal, scale, logits="trilinear"):
    """A[b, h, i, a, c] = scale * sum_d q[i, d] k1[j0(i) + a, d] k2[k0(i) + c, d] (trilinear; the
    determinant form per CONTRACT §8), -inf off the sequence."""
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    ct = compute_dtype(q.dtype)
    ax1, ax2 = window_axis(w1, N, causal), window_axis(w2, N, causal)
    q, k1, k2 = (t.to(ct) for t in (q, k1, k2))
    terms = logit_terms(logits, D, q.device)
    out = torch.empty((B, Hq, N, ax1.size, ax2.size), dtype=ct, device=q.device)
    for s, e in _query_blocks(B, N, Hq, D, ax1.size, ax2.size, len(terms)):
        blk = _Block(q, k1, k2, ax1, ax2, s, e)
        total = 0
        for sign, p1, p2 in terms:
            qk1 = blk.qk1(p1)
            G, W1 = qk1.shape[3], qk1.shape[4]
            k2t = _permute(blk.K2, p2).transpose(-1, -2)
            total = total + sign * (qk1.reshape(B, e - s, Hkv, G * W1, D) @ k2t).view(B, e - s, Hkv, G, W1, -1)
        out[:, :, s:e] = _to_heads(torch.where(blk.mask, scale * total, float("-inf")))
    return out


def scores_bwd(dscores, q, k1, k2, w1, w2, causal, scale, logits="trilinear"):
    """Gradients of sum(dscores * A) with respect to q, k1, k2 (masked slots carry none)."""
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    in_dtype = q.dtype
    ct = compute_dtype(in_dtype)
    ax1, ax2 = window_axis(w1, N, causal), window_axis(w2, N, causal)
    q, k1, k2 = (t.to(ct) for t in (q, k1, k2))
    terms = logit_terms(logits, D, q.device)
    dq = torch.zeros_like(q)
    dk1, dk2 = torch.zeros_like(k1), torch.zeros_like(k2)
    for s, e in _query_blocks(B, N, Hq, D, ax1.size, ax2.size, len(terms)):
        blk = _Block(q, k1, k2, ax1, ax2, s, e)
        # where, not multiply: a masked slot's incoming gradient may be anything (even NaN)
        ds = torch.where(blk.mask, _from_heads(dscores[:, :, s:e].to(ct), Hkv), 0)  # [B,BQ,Hkv,G,W1,W2]
        G, W1, W2 = ds.shape[3:]
        ds_rows = ds.reshape(B, e - s, Hkv, G * W1, W2)
        for sign, p1, p2 in terms:  # the derivatives of sign * sum_d q[d] k1[p1[d]] k2[p2[d]]
            f = sign * scale
            ds_k2 = (ds_rows @ _permute(blk.K2, p2)).view(B, e - s, Hkv, G, W1, D)  # sum_c dS[a, c] k2[k_c]
            dq[:, s:e] += f * (ds_k2 * _permute(blk.K1, p1)[:, :, :, None]).sum(4).reshape(B, e - s, Hq, D)
            _scatter_add(dk1, blk.j, blk.jvalid, _unpermute(f * (ds_k2 * blk.qb[:, :, :, :, None]).sum(3), p1))
            qk1 = blk.qk1(p1).reshape(B, e - s, Hkv, G * W1, D)
            _scatter_add(dk2, blk.k, blk.kvalid, _unpermute(f * (ds_rows.transpose(-1, -2) @ qk1), p2))
    return dq.to(in_dtype), dk1.to(in_dtype), dk2.to(in_dtype)


def softmax_fwd(scores):
    """Softmax over the last two dims jointly; -inf slots get 0 and an all -inf window all zeros."""
    ct = compute_dtype(scores.dtype)
    x = scores.to(ct).flatten(-2)
    m = x.amax(-1, keepdim=True)
    e = torch.exp(x - torch.where(m == float("-inf"), 0, m))  # an all -inf row: exp(-inf) = 0, not NaN
    total = e.sum(-1, keepdim=True)
    p = e / torch.where(total > 0, total, 1)
    return p.view(scores.shape).to(scores.dtype)


def softmax_bwd(dprobs, probs):
    """dS = P * (dP - sum(P * dP)) over each window."""
    ct = compute_dtype(probs.dtype)
    p, dp = probs.to(ct).flatten(-2), dprobs.to(ct).flatten(-2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    return ds.view(probs.shape).to(probs.dtype)
