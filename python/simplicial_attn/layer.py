"""Drop-in modules: the 2-simplicial attention layer, its dot-product twin, and a pre-norm block.

layer = sa.TwoSimplicialAttention(dim=256, num_heads=8, num_kv_heads=2, w1=512, w2=32)
y = layer(x)                                  # x, y: [batch, seqlen, dim]

block = sa.SimplicialTransformerBlock(dim=256, num_heads=8, simplicial=True)
y = block(x)                                  # x + attn(norm(x)), then + mlp(norm(.))
"""

import torch
import torch.nn.functional as F
from torch import nn

from .api import two_simplicial_attention
from .rope import TiedRotary, check_rope, rotary_tables, rotate_pairs


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _head_sizes(dim, num_heads, num_kv_heads, head_dim):
    """Validated (num_heads, num_kv_heads, head_dim) with the defaults filled in."""
    _check_positive_int("dim", dim)
    _check_positive_int("num_heads", num_heads)
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    _check_positive_int("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads = {num_heads} must be a multiple of num_kv_heads = {num_kv_heads}")
    if head_dim is None:
        if dim % num_heads != 0:
            raise ValueError(f"dim = {dim} must be divisible by num_heads = {num_heads} (or pass head_dim)")
        head_dim = dim // num_heads
    _check_positive_int("head_dim", head_dim)
    return num_heads, num_kv_heads, head_dim


def _check_dropout(dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _positions(x, positions):
    """RoPE positions for x [B, N, dim]: 0 .. N-1 by default, else an integer tensor [N] or [B, N]."""
    B, N = x.shape[:2]
    if positions is None:
        return torch.arange(N, device=x.device)
    if positions.dtype.is_floating_point or positions.shape not in ((N,), (B, N)):
        raise ValueError(
            f"positions must be an integer tensor of shape [N] = [{N}] or [B, N] = [{B}, {N}], "
            f"got {positions.dtype} with shape {list(positions.shape)}"
        )
    return positions


def _op_dtype(t):
    """Under autocast, the dtype autocast computes in; else t's. The custom op is not on autocast's lists,
    so without this it would see a mix of bf16 (linear outputs) and fp32 (norm outputs)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def _init_projections(in_proj, out_proj):
    """LeCun-normal (std = fan_in^-1/2) for both projections, zero biases.

    For unit-variance x, q, k1, k2 come out with unit variance, so the trilinear logits
    D^-1/2 sum_d q k1 k2 start with unit variance (neither uniform nor saturated), v1 * v2 too,
    and the output projection has unit gain from the concatenated heads.
    """
    for lin in (in_proj, out_proj):
        nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)


class QKNorm(nn.RMSNorm):
    """RMSNorm computed in float32 (bf16 activations under autocast would meet an fp32 gain)."""

    def forward(self, x):
        return super().forward(x.float())


def _qk_norm(enabled, width, eps):
    return QKNorm(width, eps=eps) if enabled else nn.Identity()


class TwoSimplicialAttention(nn.Module):
    r"""2-simplicial (trilinear) sliding-window attention as a layer: [B, N, dim] -> [B, N, dim].

    Query i attends jointly to pairs (j, k) of two windows (w1 positions for k1/v1, w2 for
    k2/v2; see `two_simplicial_attention`):

        A[i,j,k] = D^-1/2 * sum_d q[i,d] k1[j,d] k2[k,d]
        y[i]     = W_out( sum_{j,k} softmax_{(j,k)}(A[i]) * (v1[j] * v2[k]) )

    Args:
        dim: model width.
        num_heads: query heads Hq.
        num_kv_heads: key/value heads Hkv (grouped-query when < Hq; Hq % Hkv == 0). Default Hq.
            K/V are never expanded to Hq heads: the op reads kv head h // (Hq // Hkv) itself.
        head_dim: D, default dim // num_heads.
        w1, w2: window sizes (int or None = unbounded) over k1/v1 and k2/v2.
        causal: trailing windows (True, the paper's) or centred windows.
        rope: None (no positional encoding: position enters only through the windows), True
            (RoPE base 10000) or a base. The trilinear form is not invariant under rotating
            q, k1 and k2 alike, so this layer uses the tied-pair policy of `rope.TiedRotary`:
            in the first half of the head dim q and k1 are rotated and k2 is constant on
            each rotated pair; in the second half q and k2 are rotated and k1 is constant on
            each pair. Every logit then depends on positions only through j - i and k - i, so
            shifting all positions leaves the output unchanged. Needs head_dim % 4 == 0;
            k1 and k2 are then projected to 3/4 of head_dim (the tied numbers are duplicated).
        qk_norm: RMS-normalise q, k1 and k2 per head (learned gain) before RoPE.
        bias: biases in the input and output projections.
        dropout: dropout on the layer's output (the fused op has no attention-weight dropout).
        backend: passed to the op ("auto", "cuda", "triton", "cpu", "reference").

    One fused input projection yields q, k1, k2, v1, v2: Hq*D + 4*Hkv*D outputs
    (Hq*D + 3.5*Hkv*D with rope). Under autocast the five op inputs are cast to the
    autocast dtype so the op sees one dtype.

    forward(x, positions=None): x [B, N, dim]; positions (integer tensor [N] or [B, N]) are used by RoPE
    only and default to 0 .. N-1.
    """

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
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = _head_sizes(dim, num_heads, num_kv_heads, head_dim)
        _check_dropout(dropout)
        self.dim, self.w1, self.w2, self.causal, self.backend = dim, w1, w2, causal, backend
        base = check_rope(rope)
        self.rotary = None if base is None else TiedRotary(self.head_dim, base)
        key_dim = self.head_dim if self.rotary is None else self.rotary.key_dim
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.split_sizes = (hq * d, hkv * key_dim, hkv * key_dim, hkv * d, hkv * d)
        self.in_proj = nn.Linear(dim, sum(self.split_sizes), bias=bias)
        self.q_norm = _qk_norm(qk_norm, d, norm_eps)
        self.k1_norm = _qk_norm(qk_norm, key_dim, norm_eps)
        self.k2_norm = _qk_norm(qk_norm, key_dim, norm_eps)
        self.out_proj = nn.Linear(hq * d, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        _init_projections(self.in_proj, self.out_proj)

    def project(self, x, positions=None):
        """The op's five inputs: q [B, N, Hq, D]; k1, k2, v1, v2 [B, N, Hkv, D] (views of one projection)."""
        q, k1, k2, v1, v2 = self.in_proj(x).split(self.split_sizes, dim=-1)
        q = self.q_norm(q.unflatten(-1, (self.num_heads, -1)))
        k1 = self.k1_norm(k1.unflatten(-1, (self.num_kv_heads, -1)))
        k2 = self.k2_norm(k2.unflatten(-1, (self.num_kv_heads, -1)))
        v1, v2 = (v.unflatten(-1, (self.num_kv_heads, -1)) for v in (v1, v2))
        if self.rotary is not None:
            q, k1, k2 = self.rotary.expand_and_rotate(q, k1, k2, _positions(x, positions))
        dtype = _op_dtype(v1)
        return tuple(t.to(dtype) for t in (q, k1, k2, v1, v2))

    def forward(self, x, positions=None):
        out = two_simplicial_attention(
            *self.project(x, positions), w1=self.w1, w2=self.w2, causal=self.causal, backend=self.backend
        )
        return self.dropout(self.out_proj(out.flatten(-2)))

    def extra_repr(self):
        rope = "None" if self.rotary is None else f"tied(base={self.rotary.base:g})"
        return (
            f"dim={self.dim}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"w1={self.w1}, w2={self.w2}, causal={self.causal}, rope={rope}, backend={self.backend!r}"
        )


class DotProductAttention(nn.Module):
    """Standard (SDPA) attention with the same conventions, for blocks that are not 2-simplicial.

    Fused q/k/v projection (Hq*D + 2*Hkv*D outputs, GQA through SDPA's enable_gqa, no expansion),
    optional standard RoPE on q and k (plain dot products are rotation invariant), optional RMS
    q/k norm, and an optional trailing `window` (key j visible to query i iff i - window < j <= i).
    """

    def __init__(
        self,
        dim,
        num_heads,
        num_kv_heads=None,
        head_dim=None,
        causal=True,
        window=None,
        rope=None,
        qk_norm=False,
        bias=False,
        dropout=0.0,
        norm_eps=1e-6,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = _head_sizes(dim, num_heads, num_kv_heads, head_dim)
        _check_dropout(dropout)
        if window is not None:
            _check_positive_int("window", window)
            if not causal:
                raise ValueError("window needs causal=True (a trailing window)")
        self.dim, self.causal, self.window = dim, causal, window
        self.rope_base = check_rope(rope)
        if self.rope_base is not None and self.head_dim % 2 != 0:
            raise ValueError(f"rope needs an even head_dim, got head_dim={self.head_dim}")
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.split_sizes = (hq * d, hkv * d, hkv * d)
        self.in_proj = nn.Linear(dim, sum(self.split_sizes), bias=bias)
        self.q_norm = _qk_norm(qk_norm, d, norm_eps)
        self.k_norm = _qk_norm(qk_norm, d, norm_eps)
        self.out_proj = nn.Linear(hq * d, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        _init_projections(self.in_proj, self.out_proj)

    def forward(self, x, positions=None):
        q, k, v = self.in_proj(x).split(self.split_sizes, dim=-1)
        q = self.q_norm(q.unflatten(-1, (self.num_heads, -1)))
        k = self.k_norm(k.unflatten(-1, (self.num_kv_heads, -1)))
        v = v.unflatten(-1, (self.num_kv_heads, -1))
        if self.rope_base is not None:
            cos, sin = rotary_tables(_positions(x, positions), self.head_dim // 2, self.rope_base)
            q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        q, k, v = (t.to(_op_dtype(v)).transpose(1, 2) for t in (q, k, v))  # SDPA wants [B, H, N, D]
        mask = None
        if self.window is not None:
            i = torch.arange(x.shape[1], device=x.device)
            offset = i[:, None] - i[None, :]
            mask = (offset >= 0) & (offset < self.window)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=self.causal and mask is None,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.dropout(self.out_proj(out.transpose(1, 2).flatten(-2)))


class MLP(nn.Module):
    """Two-layer GELU feed-forward: dim -> hidden -> dim."""

    def __init__(self, dim, hidden, bias=False, dropout=0.0):
        super().__init__()
        _check_positive_int("hidden", hidden)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class SimplicialTransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)), [B, N, dim] -> [B, N, dim].

    Args:
        simplicial: True -> `TwoSimplicialAttention` (w1, w2, backend apply); False ->
            `DotProductAttention` (SDPA; `window` applies).
        mlp_hidden: MLP width, default 4 * dim.
        The rest as in `TwoSimplicialAttention`; norms are RMSNorm with eps `norm_eps`.
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
            self.attn = TwoSimplicialAttention(w1=w1, w2=w2, backend=backend, **common)
        else:
            self.attn = DotProductAttention(window=window, **common)
        self.attn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, 4 * dim if mlp_hidden is None else mlp_hidden, bias=bias, dropout=dropout)

    def forward(self, x, positions=None):
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))
