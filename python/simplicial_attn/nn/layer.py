"""Drop-in modules: the 2-simplicial attention layer and a pre-norm block (its SDPA twin: sdpa.py).

layer = sa.TwoSimplicialAttention(dim=256, num_heads=8, num_kv_heads=2, w1=512, w2=32)
y = layer(x)                                  # x, y: [batch, seqlen, dim]
y = layer(x_packed, cu_seqlens=cu)            # packed sequences [T, dim] (CONTRACT §6)
cache = layer.new_cache(batch)                # generation: ring caches that never grow
y = layer(x_new, cache=cache)                 # the next tokens [batch, n, dim]; cache advances

block = sa.SimplicialTransformerBlock(dim=256, num_heads=8, simplicial=True)
y = block(x)                                  # x + attn(norm(x)), then + mlp(norm(.))
"""

import torch.nn.functional as F
from torch import nn

from ..ops import checks
from ..ops.attention import two_simplicial_attention
from ..ops.varlen import two_simplicial_attention_varlen
from . import modules
from .cache import SimplicialCache
from .rope import ChunkRotary, TiedRotary, check_rope
from .sdpa import DotProductAttention

__all__ = ["DotProductAttention", "MLP", "SimplicialTransformerBlock", "TwoSimplicialAttention"]


class TwoSimplicialAttention(nn.Module):
    r"""2-simplicial (trilinear) sliding-window attention as a layer: [B, N, dim] -> [B, N, dim].

    Query i attends jointly to pairs (j, k) of two windows (w1 positions for k1/v1, w2 for
    k2/v2; see `two_simplicial_attention`):

        A[i,j,k] = D^-1/2 * sum_d q[i,d] k1[j,d] k2[k,d]       (logits="trilinear")
        y[i]     = W_out( sum_{j,k} softmax_{(j,k)}(A[i]) * (v1[j] * v2[k]) )

    Args:
        dim: model width.
        num_heads: query heads Hq.
        num_kv_heads: key/value heads Hkv (grouped-query when < Hq; Hq % Hkv == 0). Default Hq.
            K/V are never expanded to Hq heads: the op reads kv head h // (Hq // Hkv) itself.
        head_dim: D, default dim // num_heads.
        w1, w2: window sizes (int or None = unbounded) over k1/v1 and k2/v2.
        causal: trailing windows (True, the paper's) or centred windows.
        logits: "trilinear" or "determinant" (per 3-channel chunk the determinant of
            [q; k1; k2], CONTRACT §8: invariant under one rotation of all three; head_dim % 3 == 0).
        rope: None (no positional encoding: position enters only through the windows), True
            (base 10000) or a base. The trilinear form is not invariant under rotating q, k1
            and k2 alike, so with logits="trilinear" the layer uses the tied-pair policy of
            `rope.TiedRotary` (head_dim % 4 == 0; k1 and k2 are projected to 3/4 of head_dim,
            the tied numbers duplicated); with logits="determinant" it uses `rope.ChunkRotary`
            (every chunk rotated about its third axis by its token's position), which the
            determinant turns into exact relative positions. Either way each logit depends on
            positions only through j - i and k - i: shifting all positions leaves the output
            unchanged.
        qk_norm: RMS-normalise q, k1 and k2 per head (learned gain) before RoPE.
        bias: biases in the input and output projections.
        dropout: dropout on the layer's output (the fused op has no attention-weight dropout).
        backend: passed to the op ("auto", "cuda", "triton", "cpu", "reference").

    Five input projections `q_proj`, `k1_proj`, `k2_proj`, `v1_proj`, `v2_proj` (Hq*D, then Hkv*D
    outputs each; k1, k2 3/4 of that with the tied rotary) and `out_proj`: tensor parallelism shards
    the first five by output (heads) and out_proj by input (`simplicial_attn.parallel.tensor`). The
    forward reads the head counts off the projections' outputs, so it runs unchanged on a rank's
    local heads. A state dict from the earlier single fused `in_proj` still loads (split on load).
    Under autocast the five op inputs are cast to the autocast dtype so the op sees one dtype.

    forward(x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
        x [B, N, dim] (positions: integer [N] or [B, N], default 0 .. N-1, RoPE only); or packed
        [T, dim] with cu_seqlens (and optionally max_seqlen) as in
        `two_simplicial_attention_varlen`, RoPE positions restarting at every sequence; or one
        unbatched sequence [N, dim]; or, with `cache` (a `SimplicialCache` from `new_cache`), the
        next tokens [B, Nq, dim] of B sequences being generated: RoPE at their absolute
        positions, the cache advancing by Nq.
    """

    IN_PROJECTIONS = ("q_proj", "k1_proj", "k2_proj", "v1_proj", "v2_proj")

    def __init__(
        self,
        dim,
        num_heads,
        num_kv_heads=None,
        head_dim=None,
        w1=512,
        w2=32,
        causal=True,
        rope=None,
        qk_norm=False,
        bias=False,
        dropout=0.0,
        backend="auto",
        norm_eps=1e-6,
        logits="trilinear",
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = modules.head_sizes(dim, num_heads, num_kv_heads, head_dim)
        modules.check_dropout(dropout)
        modules.check_window_arg("w1", w1)
        modules.check_window_arg("w2", w2)
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
        modules.check_backend_arg(backend)
        try:
            checks.check_logits(logits, self.head_dim)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        self.dim, self.w1, self.w2, self.causal, self.backend, self.logits = dim, w1, w2, causal, backend, logits
        base = check_rope(rope)
        rotary = ChunkRotary if logits == "determinant" else TiedRotary
        self.rotary = None if base is None else rotary(self.head_dim, base)
        key_dim = self.head_dim if self.rotary is None else self.rotary.key_dim
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.key_dim = key_dim
        self.q_proj = nn.Linear(dim, hq * d, bias=bias)
        self.k1_proj = nn.Linear(dim, hkv * key_dim, bias=bias)
        self.k2_proj = nn.Linear(dim, hkv * key_dim, bias=bias)
        self.v1_proj = nn.Linear(dim, hkv * d, bias=bias)
        self.v2_proj = nn.Linear(dim, hkv * d, bias=bias)
        self.q_norm = modules.qk_norm(qk_norm, d, norm_eps)
        self.k1_norm = modules.qk_norm(qk_norm, key_dim, norm_eps)
        self.k2_norm = modules.qk_norm(qk_norm, key_dim, norm_eps)
        self.out_proj = nn.Linear(hq * d, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.register_load_state_dict_pre_hook(modules.split_fused_projection(self.IN_PROJECTIONS))
        self.reset_parameters()

    def reset_parameters(self):
        modules.init_projections([getattr(self, name) for name in self.IN_PROJECTIONS], self.out_proj)

    def project(self, x, positions=None):
        """The op's five inputs from x [..., dim]: q [..., Hq, D]; k1, k2, v1, v2 [..., Hkv, D]
        RoPE applied at `positions` (see forward; default 0 .. N-1). Under tensor parallelism: this
        rank's heads."""
        if positions is None:
            positions = modules.positions_for(x, self.dim, None, None, None)
        d, kd = self.head_dim, self.key_dim
        q = self.q_norm(self.q_proj(x).unflatten(-1, (-1, d)))
        k1 = self.k1_norm(self.k1_proj(x).unflatten(-1, (-1, kd)))
        k2 = self.k2_norm(self.k2_proj(x).unflatten(-1, (-1, kd)))
        v1, v2 = (proj(x).unflatten(-1, (-1, d)) for proj in (self.v1_proj, self.v2_proj))
        if self.rotary is not None:
            q, k1, k2 = self.rotary.expand_and_rotate(q, k1, k2, positions)
        dtype = modules.op_dtype(v1)
        return tuple(t.to(dtype) for t in (q, k1, k2, v1, v2))

    @property
    def local_kv_heads(self):
        """The kv heads this process computes: num_kv_heads, or its share under tensor parallelism."""
        return modules.local_out_features(self.v1_proj) // self.head_dim

    def new_cache(self, batch_size, *, max_chunk=1, max_length=None, dtype=None, device=None):
        """A `SimplicialCache` for this layer: rings of w + max_chunk - 1 slots (a None window
        needs max_length), in the layer's parameter dtype and device unless given."""
        if not self.causal:
            raise ValueError("a cache serves causal windows; this layer has causal=False")
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        device = self.q_proj.weight.device if device is None else device
        return SimplicialCache(batch_size, self.local_kv_heads, self.head_dim, self.w1, self.w2, max_chunk=max_chunk,
                               max_length=max_length, dtype=dtype, device=device)  # fmt: skip

    def _check_cache(self, cache):
        if not isinstance(cache, SimplicialCache):
            raise TypeError(f"cache must be a SimplicialCache (layer.new_cache), got {type(cache).__name__}")
        expect = (self.w1, self.w2, self.local_kv_heads, self.head_dim)
        got = (cache.w1, cache.w2, cache.k1.shape[2], cache.k1.shape[3])
        if got != expect:
            raise ValueError(
                f"cache has (w1, w2, kv heads, head_dim) = {got}, this layer {expect}: use layer.new_cache"
            )

    def forward(self, x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
        modules.check_input(x, self.out_proj.weight)
        if cache is not None:
            self._check_cache(cache)
        positions = modules.positions_for(x, self.dim, positions, cu_seqlens, cache)
        q, k1, k2, v1, v2 = self.project(x, positions)
        options = dict(logits=self.logits, backend=self.backend)
        if cache is not None:
            out = cache.attend(*(t.to(cache.k1.dtype) for t in (q, k1, k2, v1, v2)), **options).to(q.dtype)
            return self.dropout(self.out_proj(out.flatten(-2)))
        options.update(w1=self.w1, w2=self.w2, causal=self.causal)
        if cu_seqlens is not None:
            out = two_simplicial_attention_varlen(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, **options)
        elif x.dim() == 2:  # one unbatched sequence
            out = two_simplicial_attention(*(t[None] for t in (q, k1, k2, v1, v2)), **options)[0]
        else:
            out = two_simplicial_attention(q, k1, k2, v1, v2, **options)
        return self.dropout(self.out_proj(out.flatten(-2)))

    def extra_repr(self):
        kind = "tied" if isinstance(self.rotary, TiedRotary) else "chunk"
        rope = "None" if self.rotary is None else f"{kind}(base={self.rotary.base:g})"
        return (
            f"dim={self.dim}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"w1={self.w1}, w2={self.w2}, causal={self.causal}, logits={self.logits!r}, rope={rope}, "
            f"backend={self.backend!r}"
        )


class MLP(nn.Module):
    """Two-layer GELU feed-forward: dim -> hidden -> dim."""

    def __init__(self, dim, hidden, bias=False, dropout=0.0):
        super().__init__()
        modules.check_positive_int("hidden", hidden)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class SimplicialTransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)), [B, N, dim] -> [B, N, dim].

    Args:
        simplicial: True -> `TwoSimplicialAttention` (w1, w2, logits, backend apply); False ->
            `DotProductAttention` (SDPA; `window` applies).
        mlp_hidden: MLP width, default 4 * dim.
        The rest as in `TwoSimplicialAttention`; norms are RMSNorm with eps `norm_eps`.

    forward(x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None) takes the layouts of
    `TwoSimplicialAttention.forward`; `new_cache` makes the attention layer's cache.
    """

    def __init__(
        self,
        dim,
        num_heads,
        num_kv_heads=None,
        head_dim=None,
        simplicial=True,
        w1=512,
        w2=32,
        window=None,
        causal=True,
        rope=None,
        qk_norm=False,
        mlp_hidden=None,
        bias=False,
        dropout=0.0,
        norm_eps=1e-6,
        backend="auto",
        logits="trilinear",
    ):
        super().__init__()
        common = dict(
            dim=dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            causal=causal,
            rope=rope,
            qk_norm=qk_norm,
            bias=bias,
            dropout=dropout,
            norm_eps=norm_eps,
        )
        self.simplicial = simplicial
        if simplicial:
            self.attn = TwoSimplicialAttention(w1=w1, w2=w2, backend=backend, logits=logits, **common)
        else:
            self.attn = DotProductAttention(window=window, **common)
        self.attn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, 4 * dim if mlp_hidden is None else mlp_hidden, bias=bias, dropout=dropout)

    def new_cache(self, batch_size, **kw):
        return self.attn.new_cache(batch_size, **kw)

    def forward(self, x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
        x = x + self.attn(self.attn_norm(x), positions, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, cache=cache)
        return x + self.mlp(self.mlp_norm(x))
