"""The reference backend: CONTRACT §1 in plain PyTorch, chunked so memory stays bounded.

This is the executable spec. It runs on any device torch runs on, in any floating dtype
(fp16/bf16 are computed in float32, float64 in float64), and never materialises the
(i, j, k) cube: it walks query blocks of BQ positions and, inside each, chunks of CJ
positions of the k1 window, so the largest temporary is about B * Hq * BQ * CJ * max(W2, D)
elements (see `_plan`).

Layout inside a chunk, for queries i in the block, window offsets a (k1) and c (k2):
    qb   [B, BQ, Hkv, G, D]     query heads grouped by the kv head they read (G = Hq / Hkv)
    K1   [B, BQ, Hkv, CJ, D]    k1 gathered at j = j0(i) + a (zeros outside the window)
    K2   [B, BQ, Hkv, W2, D]    k2 gathered at k = k0(i) + c
    A    [B, BQ, Hkv, G, CJ, W2] logits, -inf outside the window

The forward is two passes per block (lse, then out): exact, simple, and it is the same
recomputation the fused backward relies on. The backward applies the CONTRACT formulas
chunk by chunk and scatters key gradients back with index_add_.
"""

import torch

from ._windows import window_start

# Elements per chunk temporary: 2^22 fp32 is 16 MiB, so a handful of live temporaries stays
# far below the 1 GiB bound of issue 2 at B=1, N=4096, H=4, D=64, w1=512, w2=32.
CHUNK_ELEMENTS = 1 << 22
QUERY_BLOCK = 64


def compute_dtype(dtype):
    """Accumulation dtype for inputs of `dtype`, which is also the dtype of lse (CONTRACT §1:
    float32; float64 for float64 inputs so gradcheck stays sharp)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _plan(B, N, Hq, D, w1, w2):
    """Query block BQ and k1-window chunk CJ so that B*Hq*BQ*CJ*max(W2, D) <= CHUNK_ELEMENTS."""
    row = B * Hq * max(w2, D)
    bq = max(1, min(QUERY_BLOCK, N, CHUNK_ELEMENTS // max(row, 1)))
    cj = max(1, min(w1, CHUNK_ELEMENTS // max(row * bq, 1)))
    return bq, cj


def _gather(x, idx, valid):
    """x [B, N, Hkv, D] at positions idx [BQ, C] -> [B, BQ, Hkv, C, D], zero where not valid."""
    B, N, Hkv, D = x.shape
    g = x[:, idx.clamp(0, N - 1).flatten()].view(B, *idx.shape, Hkv, D)
    g = torch.where(valid[None, :, :, None, None], g, 0)
    return g.permute(0, 1, 3, 2, 4)


def _scatter_add(dst, idx, valid, src):
    """dst [B, N, Hkv, D] += src [B, BQ, Hkv, C, D] at positions idx [BQ, C] (valid ones only)."""
    B, BQ, Hkv, C, D = src.shape
    src = torch.where(valid[None, :, None, :, None], src, 0).permute(0, 1, 3, 2, 4)
    dst.index_add_(1, idx.clamp(0, dst.shape[1] - 1).flatten(), src.reshape(B, BQ * C, Hkv, D))


class _Chunk:
    """One (query block, k1-window chunk): gathered windows, masks and logits."""

    def __init__(self, q, k1, k2, s, e, a0, a1, w1, w2, causal, scale):
        B, N, Hq, D = q.shape
        Hkv = k1.shape[2]
        dev = q.device
        i = torch.arange(s, e, device=dev)
        self.j = window_start(i, w1, causal)[:, None] + torch.arange(a0, a1, device=dev)  # [BQ, CJ]
        self.k = window_start(i, w2, causal)[:, None] + torch.arange(w2, device=dev)  # [BQ, W2]
        self.jvalid = (self.j >= 0) & (self.j < N)
        self.kvalid = (self.k >= 0) & (self.k < N)
        self.qb = q[:, s:e].view(B, e - s, Hkv, Hq // Hkv, D)
        self.K1 = _gather(k1, self.j, self.jvalid)
        self.K2 = _gather(k2, self.k, self.kvalid)
        # (q * k1_j) for every j of the chunk, then one batched matmul against the k2 window.
        self.qk1 = self.qb[:, :, :, :, None, :] * self.K1[:, :, :, None, :, :]  # [B,BQ,Hkv,G,CJ,D]
        logits = scale * _pair_matmul(self.qk1, self.K2)
        mask = self.jvalid[:, None, None, :, None] & self.kvalid[:, None, None, None, :]
        self.A = torch.where(mask[None], logits, float("-inf"))  # [B,BQ,Hkv,G,CJ,W2]


def _pair_matmul(x, win):
    """x [B,BQ,Hkv,G,CJ,D] against win [B,BQ,Hkv,W2,D] -> [B,BQ,Hkv,G,CJ,W2] (sum over D)."""
    B, BQ, Hkv, G, CJ, D = x.shape
    return (x.reshape(B, BQ, Hkv, G * CJ, D) @ win.transpose(-1, -2)).view(B, BQ, Hkv, G, CJ, -1)


def _weighted_pairs(p, first, second):
    """sum_{j,k} p[..., j, k] * first[j, :] * second[k, :] -> [B, BQ, Hkv, G, D]."""
    B, BQ, Hkv, G, CJ, W2 = p.shape
    p_second = (p.reshape(B, BQ, Hkv, G * CJ, W2) @ second).view(B, BQ, Hkv, G, CJ, -1)
    return (p_second * first[:, :, :, None]).sum(-2)


def _blocks(N, w1, bq, cj, causal):
    """Yield (s, e, spans): query block [s, e) and the k1-window offset chunks [a0, a1) worth visiting."""
    for s in range(0, N, bq):
        e = min(s + bq, N)
        # Offsets a whose position j0(i) + a lands inside [0, N) for some i of the block.
        lo = max(0, -window_start(e - 1, w1, causal))
        hi = min(w1, N - window_start(s, w1, causal))
        yield s, e, [(a0, min(a0 + cj, hi)) for a0 in range(lo, hi, cj)]


def _chunks(q, k1, k2, s, e, spans, w1, w2, causal, scale):
    for a0, a1 in spans:
        yield _Chunk(q, k1, k2, s, e, a0, a1, w1, w2, causal, scale)


def fwd(q, k1, k2, v1, v2, w1, w2, causal, scale):
    """Returns (out [B, N, Hq, D] in q's dtype, lse [B, Hq, N] natural log)."""
    in_dtype = q.dtype
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    ct = compute_dtype(in_dtype)
    q, k1, k2, v1, v2 = (t.to(ct) for t in (q, k1, k2, v1, v2))
    bq, cj = _plan(B, N, Hq, D, w1, w2)
    lse = torch.full((B, N, Hkv, Hq // Hkv), float("-inf"), dtype=ct, device=q.device)
    out = torch.zeros(B, N, Hkv, Hq // Hkv, D, dtype=ct, device=q.device)
    for s, e, spans in _blocks(N, w1, bq, cj, causal):
        # Pass 1: log-sum-exp over the joint window; pass 2: out = sum P * (v1_j (x) v2_k).
        # A block whose window fits one chunk keeps it between the passes instead of recomputing it.
        kept = len(spans) == 1
        chunks = list(_chunks(q, k1, k2, s, e, spans, w1, w2, causal, scale)) if kept else None
        for c in chunks or _chunks(q, k1, k2, s, e, spans, w1, w2, causal, scale):
            lse[:, s:e] = torch.logaddexp(lse[:, s:e], torch.logsumexp(c.A.flatten(-2), dim=-1))
        for c in chunks or _chunks(q, k1, k2, s, e, spans, w1, w2, causal, scale):
            p = torch.exp(c.A - lse[:, s:e, :, :, None, None])
            out[:, s:e] += _weighted_pairs(p, _gather(v1, c.j, c.jvalid), _gather(v2, c.k, c.kvalid))
    out = out.view(B, N, Hq, D).to(in_dtype)
    return out, lse.view(B, N, Hq).permute(0, 2, 1).contiguous()


def bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale):
    """Returns (dq, dk1, dk2, dv1, dv2), each in its input's dtype and shape."""
    in_dtype = q.dtype
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    G = Hq // Hkv
    ct = compute_dtype(in_dtype)
    dout, q, k1, k2, v1, v2, out = (t.to(ct) for t in (dout, q, k1, k2, v1, v2, out))
    lse = lse.to(ct).permute(0, 2, 1).reshape(B, N, Hkv, G)
    delta = (dout * out).sum(-1).view(B, N, Hkv, G)
    dq = torch.zeros(B, N, Hkv, G, D, dtype=ct, device=q.device)
    dk1, dk2, dv1, dv2 = (torch.zeros(B, N, Hkv, D, dtype=ct, device=q.device) for _ in range(4))
    bq, cj = _plan(B, N, Hq, D, w1, w2)
    for s, e, spans in _blocks(N, w1, bq, cj, causal):
        for c in _chunks(q, k1, k2, s, e, spans, w1, w2, causal, scale):
            V1, V2 = _gather(v1, c.j, c.jvalid), _gather(v2, c.k, c.kvalid)
            do = dout[:, s:e].view(B, e - s, Hkv, G, D)
            p = torch.exp(c.A - lse[:, s:e, :, :, None, None])  # recomputed P, zero outside the window
            # dP[i,j,k] = sum_d dout[i,d] v1[j,d] v2[k,d]; dA = P (dP - Delta)
            dp = _pair_matmul(do[:, :, :, :, None, :] * V1[:, :, :, None], V2)
            da = p * (dp - delta[:, s:e, :, :, None, None])
            da2 = da.reshape(B, e - s, Hkv, G * da.shape[4], w2)  # [B,BQ,Hkv,G*CJ,W2]
            p2 = p.reshape(da2.shape)
            dq[:, s:e] += scale * _weighted_pairs(da, c.K1, c.K2)
            # dk1[j] = scale sum_{i,k} dA q[i] k2[k];  dv1[j] = sum_{i,k} P dout[i] v2[k]
            da_k2 = (da2 @ c.K2).view(*da.shape[:-1], D)  # [B,BQ,Hkv,G,CJ,D]
            p_v2 = (p2 @ V2).view(*p.shape[:-1], D)
            _scatter_add(dk1, c.j, c.jvalid, scale * (da_k2 * c.qb[:, :, :, :, None]).sum(3))
            _scatter_add(dv1, c.j, c.jvalid, (p_v2 * do[:, :, :, :, None]).sum(3))
            # dk2[k] = scale sum_{i,j} dA q[i] k1[j];  dv2[k] = sum_{i,j} P dout[i] v1[j]
            do_v1 = (do[:, :, :, :, None, :] * V1[:, :, :, None]).reshape(B, e - s, Hkv, -1, D)
            _scatter_add(dk2, c.k, c.kvalid, scale * da2.transpose(-1, -2) @ c.qk1.reshape(do_v1.shape))
            _scatter_add(dv2, c.k, c.kvalid, p2.transpose(-1, -2) @ do_v1)
    grads = (dq.view(B, N, Hq, D), dk1, dk2, dv1, dv2)
    return tuple(g.to(in_dtype) for g in grads)
