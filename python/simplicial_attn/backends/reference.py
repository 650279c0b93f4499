r"""The reference backend: CONTRACT §1 and §6-§8 in plain PyTorch, chunked so memory stays bounded.

This is the executable spec. It runs on any device torch runs on, in any floating dtype
(fp16/bf16 are computed in float32, float64 in float64), and never materialises the
(i, j, k) cube: it walks query blocks of BQ rows and, inside each, chunks of CJ offsets of
the k1 window, so the largest temporary is about B * Hq * BQ * CJ * max(W2, D) elements (see
`_plan`).

Layout inside a chunk, for the query rows of the block, window offsets a (k1) and c (k2):
    qb   [B, BQ, Hkv, G, D]      query heads grouped by the kv head they read (G = Hq / Hkv)
    K1   [B, BQ, Hkv, CJ, D]     k1 gathered at the row's a-th window position (zeros outside)
    K2   [B, BQ, Hkv, W2, D]     k2 gathered at the row's c-th window position
    A    [B, BQ, Hkv, G, CJ, W2] logits, -inf outside the window

Which positions a row's windows hold, and where they live, is the only difference between the
three layouts (`_Rows`): batched rows see [0, N); packed rows (CONTRACT §6) see their own
sequence [cu[s], cu[s+1]); decoding rows (CONTRACT §7) sit at position cache_seqlens[b] + t and
find position p in ring slot p % C.

The logit is a signed sum of channel-permuted trilinear forms (`logit_terms`):
    trilinear    A = scale * sum_d q[d] k1[d] k2[d]
    determinant  A = scale * sum_d q[d] (k1[s(d)] k2[s(s(d))] - k1[s(s(d))] k2[s(d)]),
                 s(d) = 3 (d // 3) + (d + 1) % 3   (CONTRACT §8, Sarrus' rule per chunk)
and every gradient formula below is applied term by term.

Softmax numerics (README "Numerics"; CONTRACT §4: large finite logits never overflow): lse is
accumulated in float64, stored in the compute dtype as lse plus its rounding residual lse_lo
(lse + lse_lo = the float64 value to about twice the precision), and every probability is
P = exp(min((A - lse) - lse_lo, 0)): subtract first, and never above 1, so logits of any finite
size neither overflow nor lose the softmax's precision.

The forward is two passes per block (lse, then out): exact, simple, and the same recomputation
the fused backward relies on. The backward applies the CONTRACT formulas chunk by chunk and
scatters key gradients back with index_add_.
"""

import torch

from ..problem import compute_dtype

# Elements per chunk temporary: 2^22 fp32 is 16 MiB, so a handful of live temporaries stays
# far below the 1 GiB bound of issue 2 at B=1, N=4096, H=4, D=64, w1=512, w2=32.
CHUNK_ELEMENTS = 1 << 22
QUERY_BLOCK = 64


def chunk_successor(d, device=None):
    """s(d) = 3 (d // 3) + (d + 1) % 3 for d in 0 .. d - 1: the next channel of d's 3-channel chunk."""
    c = torch.arange(d, device=device)
    return 3 * (c // 3) + (c + 1) % 3


def logit_terms(logits, d, device=None):
    """The logit as [(sign, p1, p2)]: A = scale * sum_terms sign * sum_d q[d] k1[p1[d]] k2[p2[d]]
    (None: the identity permutation)."""
    if logits == "trilinear":
        return [(1.0, None, None)]
    s = chunk_successor(d, device)
    return [(1.0, s, s[s]), (-1.0, s[s], s)]


def _permute(x, p):
    return x if p is None else x[..., p]


def _unpermute(x, p):
    """y with y[..., p[d]] = x[..., d]."""
    return x if p is None else x[..., torch.argsort(p)]


def _plan(B, N, Hq, D, w1, w2, terms=1):
    """Query block BQ and k1-window chunk CJ so that B*Hq*BQ*CJ*max(W2, D)*terms <= CHUNK_ELEMENTS."""
    row = B * Hq * max(w2, D) * terms
    bq = max(1, min(QUERY_BLOCK, N, CHUNK_ELEMENTS // max(row, 1)))
    cj = max(1, min(w1, CHUNK_ELEMENTS // max(row * bq, 1)))
    return bq, cj


def _gather(x, idx, valid):
    """x [B, L, Hkv, D] at indices idx [1 or B, BQ, C] -> [B, BQ, Hkv, C, D], zero where not valid."""
    B, L, Hkv, D = x.shape
    safe = idx.clamp(0, L - 1)
    if idx.shape[0] == 1:
        g = x[:, safe.flatten()].view(B, *idx.shape[1:], Hkv, D)
    else:
        g = x[torch.arange(B, device=x.device)[:, None, None], safe]
    g = torch.where(valid[..., None, None], g, 0)
    return g.permute(0, 1, 3, 2, 4)


def _scatter_add(dst, idx, valid, src):
    """dst [B, N, Hkv, D] += src [B, BQ, Hkv, C, D] at positions idx [1, BQ, C] (valid ones only)."""
    B, BQ, Hkv, C, D = src.shape
    src = torch.where(valid[:, :, None, :, None], src, 0).permute(0, 1, 3, 2, 4)
    dst.index_add_(1, idx[0].clamp(0, dst.shape[1] - 1).flatten(), src.reshape(B, BQ * C, Hkv, D))


class _Rows:
    """Where the windows of query rows [s, e) are, for the three layouts of the module doc:
    (index [1 or B, BQ, C] into the key tensors' second axis, valid [1 or B, BQ, C]) of the k1
    window offsets [a0, a1) and of the whole k2 window.

    n_keys: the keys' sequence length (batched and packed layouts); ring: the cache sizes
    (C1, C2) when decoding."""

    def __init__(self, prob, n_rows, device, n_keys=None, ring=None):
        self.prob, self.device, self.n_keys, self.ring = prob, device, n_keys, ring
        self.bounds = None  # packed layout: each row's sequence [lo, hi)
        if prob.cu_seqlens is not None:
            cu = prob.cu_seqlens.to(device=device, dtype=torch.int64)
            seq = torch.searchsorted(cu[1:], torch.arange(n_rows, device=device), right=True)
            seq = seq.clamp(max=cu.numel() - 2)
            self.bounds = cu[seq][:, None], cu[seq + 1][:, None]

    def _window(self, s, e, band, start, stop, ring_size):
        """Offsets [start, stop) of the band: offset a of query position P is position P - left + a."""
        offsets = torch.arange(start, stop, device=self.device)
        i = torch.arange(s, e, device=self.device)
        prob = self.prob
        if prob.cache_seqlens is not None:  # decoding: row t of sequence b is position L_b + t
            pos = prob.cache_seqlens.to(device=self.device, dtype=torch.int64)[:, None] + i  # [B, BQ]
            p = pos[:, :, None] - band.left + offsets  # the causal band: right == 0
            return p.clamp(min=0) % ring_size, p >= 0
        p = ((i - band.left)[:, None] + offsets)[None]
        if self.bounds is None:
            return p, (p >= 0) & (p < self.n_keys)
        lo, hi = self.bounds
        return p, (p >= lo[s:e]) & (p < hi[s:e])

    def j(self, s, e, a0, a1):
        return self._window(s, e, self.prob.band1, a0, a1, self.ring and self.ring[0])

    def k(self, s, e):
        band = self.prob.band2
        return self._window(s, e, band, 0, band.width, self.ring and self.ring[1])


class _Chunk:
    """One (query block, k1-window chunk): gathered windows, masks and logits."""

    def __init__(self, q, k1, k2, rows, s, e, a0, a1, terms):
        B, _, Hq, D = q.shape
        Hkv = k1.shape[2]
        self.j, self.jvalid = rows.j(s, e, a0, a1)  # [1 or B, BQ, CJ]
        self.k, self.kvalid = rows.k(s, e)  # [1 or B, BQ, W2]
        self.qb = q[:, s:e].view(B, e - s, Hkv, Hq // Hkv, D)
        self.K1 = _gather(k1, self.j, self.jvalid)
        self.K2 = _gather(k2, self.k, self.kvalid)
        # Per term, (q * k1_j) for every j of the chunk, then one batched matmul against the k2 window.
        self.terms = terms
        self.qk1 = [self.qb[:, :, :, :, None, :] * _permute(self.K1, p1)[:, :, :, None] for _, p1, _ in terms]
        logits = sum(
            sign * _pair_matmul(x, _permute(self.K2, p2)) for (sign, _, p2), x in zip(terms, self.qk1, strict=True)
        )
        mask = self.jvalid[:, :, None, None, :, None] & self.kvalid[:, :, None, None, None, :]
        self.A = torch.where(mask, rows.prob.scale * logits, float("-inf"))  # [B,BQ,Hkv,G,CJ,W2]


def _pair_matmul(x, win):
    """x [B,BQ,Hkv,G,CJ,D] against win [B,BQ,Hkv,W2,D] -> [B,BQ,Hkv,G,CJ,W2] (sum over D)."""
    B, BQ, Hkv, G, CJ, D = x.shape
    return (x.reshape(B, BQ, Hkv, G * CJ, D) @ win.transpose(-1, -2)).view(B, BQ, Hkv, G, CJ, -1)


def _weighted_pairs(p, first, second):
    """sum_{j,k} p[..., j, k] * first[j, :] * second[k, :] -> [B, BQ, Hkv, G, D]."""
    B, BQ, Hkv, G, CJ, W2 = p.shape
    p_second = (p.reshape(B, BQ, Hkv, G * CJ, W2) @ second).view(B, BQ, Hkv, G, CJ, -1)
    return (p_second * first[:, :, :, None]).sum(-2)


def _probs(A, lse, lse_lo):
    """P = exp(min((A - lse) - lse_lo, 0)) with lse, lse_lo [B, BQ, Hkv, G]; the select keeps NaN."""
    t = (A - lse[..., None, None]) - lse_lo[..., None, None]
    return torch.exp(torch.where(t > 0, 0.0, t))


def _blocks(N, band1, bq, cj, decoding):
    """Yield (s, e, spans): query block [s, e) and the k1-window offset chunks [a0, a1) worth visiting."""
    w1 = band1.width
    for s in range(0, N, bq):
        e = min(s + bq, N)
        if decoding:  # positions depend on cache_seqlens: visit the whole window
            lo, hi = 0, w1
        else:  # offsets a whose position i - left + a lands inside [0, N) for some i of the block
            lo = max(0, band1.left - (e - 1))
            hi = min(w1, N - (s - band1.left))
        yield s, e, [(a0, min(a0 + cj, hi)) for a0 in range(lo, hi, cj)]


def _split_lse(lse64, ct):
    """(lse, lse_lo) in dtype ct from the float64 log-sum-exp: lse_lo = 0 where lse is not finite."""
    lse = lse64.to(ct)
    lo = (lse64 - lse.double()).to(ct)
    return lse, torch.where(torch.isfinite(lse), lo, 0)


def _forward(q, k1, k2, v1, v2, prob, rows):
    """(out [B, N, Hq, D] in q's dtype, lse, lse_lo [B, N, Hkv, G] in the compute dtype)."""
    in_dtype = q.dtype
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    ct = compute_dtype(in_dtype)
    q, k1, k2, v1, v2 = (t.to(ct) for t in (q, k1, k2, v1, v2))
    terms = logit_terms(prob.logits, D, q.device)
    bq, cj = _plan(B, N, Hq, D, prob.band1.width, prob.band2.width, len(terms))
    lse64 = torch.full((B, N, Hkv, Hq // Hkv), float("-inf"), dtype=torch.float64, device=q.device)
    lse = torch.empty(B, N, Hkv, Hq // Hkv, dtype=ct, device=q.device)
    lse_lo = torch.empty_like(lse)
    out = torch.zeros(B, N, Hkv, Hq // Hkv, D, dtype=ct, device=q.device)

    def chunks(s, e, spans):
        for a0, a1 in spans:
            yield _Chunk(q, k1, k2, rows, s, e, a0, a1, terms)

    for s, e, spans in _blocks(N, prob.band1, bq, cj, prob.cache_seqlens is not None):
        # Pass 1: log-sum-exp over the joint window; pass 2: out = sum P * (v1_j (x) v2_k).
        # A block whose window fits one chunk keeps it between the passes instead of recomputing it.
        kept = list(chunks(s, e, spans)) if len(spans) == 1 else None
        for c in kept or chunks(s, e, spans):
            lse64[:, s:e] = torch.logaddexp(lse64[:, s:e], torch.logsumexp(c.A.double().flatten(-2), dim=-1))
        lse[:, s:e], lse_lo[:, s:e] = _split_lse(lse64[:, s:e], ct)
        for c in kept or chunks(s, e, spans):
            p = _probs(c.A, lse[:, s:e], lse_lo[:, s:e])
            out[:, s:e] += _weighted_pairs(p, _gather(v1, c.j, c.jvalid), _gather(v2, c.k, c.kvalid))
    return out.view(B, N, Hq, D).to(in_dtype), lse, lse_lo


def _heads_first(x):
    """[B, N, Hkv, G] -> [B, Hq, N] contiguous (the CONTRACT's lse layout)."""
    B, N = x.shape[:2]
    return x.reshape(B, N, -1).permute(0, 2, 1).contiguous()


def fwd(q, k1, k2, v1, v2, prob):
    """Returns (out [B, N, Hq, D] in q's dtype, lse, lse_lo [B, Hq, N], natural log)."""
    rows = _Rows(prob, q.shape[1], q.device, n_keys=k1.shape[1])
    out, lse, lse_lo = _forward(q, k1, k2, v1, v2, prob, rows)
    return out, _heads_first(lse), _heads_first(lse_lo)


def decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob):
    """Decoding against ring caches (CONTRACT §7): (out [B, Nq, Hq, D], lse [B, Hq, Nq])."""
    rows = _Rows(prob, q.shape[1], q.device, ring=(k1_cache.shape[1], k2_cache.shape[1]))
    out, lse, _ = _forward(q, k1_cache, k2_cache, v1_cache, v2_cache, prob, rows)
    return out, _heads_first(lse)


def bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob):
    """Returns (dq, dk1, dk2, dv1, dv2), each in its input's dtype and shape."""
    in_dtype = q.dtype
    B, N, Hq, D = q.shape
    Hkv = k1.shape[2]
    G = Hq // Hkv
    ct = compute_dtype(in_dtype)
    dout, q, k1, k2, v1, v2, out = (t.to(ct) for t in (dout, q, k1, k2, v1, v2, out))
    lse, lse_lo = (t.to(ct).permute(0, 2, 1).reshape(B, N, Hkv, G) for t in (lse, lse_lo))
    delta = (dout * out).sum(-1).view(B, N, Hkv, G)
    dq = torch.zeros(B, N, Hkv, G, D, dtype=ct, device=q.device)
    dk1, dk2, dv1, dv2 = (torch.zeros(B, N, Hkv, D, dtype=ct, device=q.device) for _ in range(4))
    terms = logit_terms(prob.logits, D, q.device)
    rows = _Rows(prob, N, q.device, n_keys=N)
    scale = prob.scale
    bq, cj = _plan(B, N, Hq, D, prob.band1.width, prob.band2.width, len(terms))
    for s, e, spans in _blocks(N, prob.band1, bq, cj, False):
        for a0, a1 in spans:
            c = _Chunk(q, k1, k2, rows, s, e, a0, a1, terms)
            V1, V2 = _gather(v1, c.j, c.jvalid), _gather(v2, c.k, c.kvalid)
            do = dout[:, s:e].view(B, e - s, Hkv, G, D)
            p = _probs(c.A, lse[:, s:e], lse_lo[:, s:e])  # recomputed P, zero outside the window
            # dP[i,j,k] = sum_d dout[i,d] v1[j,d] v2[k,d]; dA = P (dP - Delta)
            dp = _pair_matmul(do[:, :, :, :, None, :] * V1[:, :, :, None], V2)
            da = p * (dp - delta[:, s:e, :, :, None, None])
            da2 = da.reshape(B, e - s, Hkv, G * da.shape[4], prob.band2.width)  # [B,BQ,Hkv,G*CJ,W2]
            p2 = p.reshape(da2.shape)
            for (sign, p1, pk2), qk1 in zip(terms, c.qk1, strict=True):
                # One term sign * sum_d q[d] k1[p1[d]] k2[p2[d]]: its derivative in q[d] is
                # k1[p1[d]] k2[p2[d]], in k1[p1[d]] is q[d] k2[p2[d]], in k2[p2[d]] is q[d] k1[p1[d]].
                K1p, K2p = _permute(c.K1, p1), _permute(c.K2, pk2)
                f = sign * scale
                dq[:, s:e] += f * _weighted_pairs(da, K1p, K2p)
                da_k2 = (da2 @ K2p).view(*da.shape[:-1], D)  # [B,BQ,Hkv,G,CJ,D]
                _scatter_add(dk1, c.j, c.jvalid, _unpermute(f * (da_k2 * c.qb[:, :, :, :, None]).sum(3), p1))
                dk2_t = da2.transpose(-1, -2) @ qk1.reshape(B, e - s, Hkv, -1, D)
                _scatter_add(dk2, c.k, c.kvalid, _unpermute(f * dk2_t, pk2))
            # dv1[j] = sum_{i,k} P dout[i] v2[k];  dv2[k] = sum_{i,j} P dout[i] v1[j]
            p_v2 = (p2 @ V2).view(*p.shape[:-1], D)
            _scatter_add(dv1, c.j, c.jvalid, (p_v2 * do[:, :, :, :, None]).sum(3))
            do_v1 = (do[:, :, :, :, None, :] * V1[:, :, :, None]).reshape(B, e - s, Hkv, -1, D)
            _scatter_add(dv2, c.k, c.kvalid, p2.transpose(-1, -2) @ do_v1)
    grads = (dq.view(B, N, Hq, D), dk1, dk2, dv1, dv2)
    return tuple(g.to(in_dtype) for g in grads)
