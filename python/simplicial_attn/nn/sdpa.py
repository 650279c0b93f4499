r"""Standard (SDPA) attention with the conventions of the 2-simplicial layer, and its cache.

The blocks of a model that are not 2-simplicial use `DotProductAttention`; for generation each
keeps a `DotProductCache`: a ring of `window + max_chunk - 1` slots for a trailing window (key j
visible to query i iff i - window < j <= i), or a linear cache of `max_length` slots for full
causal attention. Keys are cached after RoPE (at their absolute positions), as usual.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import checks
from . import modules
from .rope import check_rope, rotary_tables, rotate_pairs


class DotProductCache:
    """Keys and values of one SDPA layer for B sequences being generated: ring slots (position p
    in slot p % C) and `lengths` (int32 [B]); `attend` writes the new tokens and advances."""

    def __init__(
        self, batch_size, num_kv_heads, head_dim, window=None, *, max_chunk=1, max_length=None, dtype=None, device=None
    ):
        modules.check_window_arg("window", window)
        modules.check_positive_int("max_chunk", max_chunk)
        if window is None and max_length is None:
            raise ValueError("full causal attention reads every position: pass max_length (a linear cache)")
        slots = max_length if window is None else window + max_chunk - 1
        if max_length is not None:
            slots = min(slots, max_length)
        self.window, self.max_chunk = window, max_chunk
        shape = (batch_size, slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)

    @property
    def dtype(self):
        return self.k.dtype

    def positions(self, n):
        return self.lengths.long()[:, None] + torch.arange(n, device=self.lengths.device)

    def narrow(self, start, length):
        """A cache of sequences start .. start + length - 1 sharing this one's storage (prefill one
        sequence of a batch at a time)."""
        view = object.__new__(DotProductCache)
        view.window, view.max_chunk = self.window, self.max_chunk
        view.k, view.v, view.lengths = (t.narrow(0, start, length) for t in (self.k, self.v, self.lengths))
        return view

    def attend(self, q, k, v):
        """q [B, Nq, Hq, D], k, v [B, Nq, Hkv, D] (RoPE applied) -> out [B, Nq, Hq, D]; lengths += Nq."""
        B, Nq = q.shape[:2]
        C = self.k.shape[1]
        need = Nq if self.window is None else self.window + Nq - 1
        if need > C:
            raise ValueError(f"{Nq} new tokens need a cache of >= {need} slots, this one has {C}")
        L = self.lengths.long()
        if self.window is None and checks.values_readable(L) and int(L.max()) + Nq > C:
            raise ValueError(f"the linear cache of {C} slots cannot hold {int(L.max())} + {Nq} tokens (max_length)")
        rows = torch.arange(B, device=q.device)[:, None]
        pos = L[:, None] + torch.arange(Nq, device=q.device)  # [B, Nq] absolute positions of the new tokens
        self.k[rows, pos % C] = k.to(self.k.dtype)
        self.v[rows, pos % C] = v.to(self.v.dtype)
        # The position each slot holds now: the last p <= end with p % C == slot (negative: empty).
        end = L + Nq - 1
        slot = torch.arange(C, device=q.device)
        held = end[:, None] - (end[:, None] - slot) % C  # [B, C]
        visible = (held[:, None, :] >= 0) & (held[:, None, :] <= pos[:, :, None])  # [B, Nq, C]
        if self.window is not None:
            visible &= pos[:, :, None] - held[:, None, :] < self.window
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), self.k.transpose(1, 2).to(q.dtype), self.v.transpose(1, 2).to(q.dtype),
            attn_mask=visible[:, None], enable_gqa=q.shape[2] != k.shape[2],
        )  # fmt: skip
        self.lengths += Nq
        return out.transpose(1, 2)


def _packed_sdpa(q, k, v, cu_seqlens, max_seqlen, causal, window, enable_gqa):
    """SDPA over packed sequences q [T, Hq, D], k, v [T, Hkv, D] -> [T, Hq, D], each sequence alone.

    The sequences are gathered into a padded [S, L] batch (L = the longest) rather than attended
    as one [T, T] block-diagonal mask: S * L^2 instead of T^2 work (16x less for 16 sequences of
    equal length). A padded slot reads row 0 (no copy of the inputs): a real query never sees a
    padded key (masked, or after it in causal order), and a padded query sees every key (finite)
    while its output is dropped, so its output gradient is zero and nothing flows back through it.
    """
    T, device = q.shape[0], q.device
    if T == 0:  # only empty sequences: nothing to attend (and no row 0 to read)
        return q
    cu = cu_seqlens.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    longest = int(lengths.max()) if max_seqlen is None and lengths.numel() else (max_seqlen or 0)
    L = max(1, int(longest))
    t = torch.arange(L, device=device)
    valid = t[None, :] < lengths[:, None]  # [S, L]
    rows = torch.where(valid, cu[:-1, None] + t[None, :], 0)

    def gather(x):
        return x[rows].transpose(1, 2)  # [S, H, L, D]

    mask = None
    if window is not None or not causal:
        mask = valid[:, None, :] | ~valid[:, :, None]  # [S, Lq, Lk]: real keys; padded queries see all
        offset = t[:, None] - t[None, :]
        if causal:
            mask = mask & (offset >= 0)
        if window is not None:
            mask = mask & (offset < window)
        mask = mask[:, None]
    out = F.scaled_dot_product_attention(
        gather(q), gather(k), gather(v), attn_mask=mask, is_causal=causal and mask is None, enable_gqa=enable_gqa
    ).transpose(1, 2)  # [S, L, Hq, D]
    token = torch.arange(T, device=device)
    seq = torch.searchsorted(cu[1:], token, right=True)
    return out.flatten(0, 1)[seq * L + token - cu[seq]]


class DotProductAttention(nn.Module):
    """Standard (SDPA) attention with the same conventions, for blocks that are not 2-simplicial.

    Projections `q_proj`, `k_proj`, `v_proj` (Hq*D, Hkv*D, Hkv*D outputs; GQA through SDPA's
    enable_gqa, no expansion) and `out_proj`, sharded by heads under tensor parallelism (the forward
    reads the head counts off the projections' outputs; a state dict with the earlier fused
    `in_proj` still loads),
    optional standard RoPE on q and k (plain dot products are rotation invariant), optional RMS
    q/k norm, and an optional trailing `window` (key j visible to query i iff i - window < j <= i).

    forward(x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None): the layouts of
    `TwoSimplicialAttention.forward`; packed sequences run as one padded batch of the sequences
    (S * L^2 work for S sequences of at most L tokens: the baseline of the examples, not a varlen
    kernel).
    """

    IN_PROJECTIONS = ("q_proj", "k_proj", "v_proj")

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
        self.num_heads, self.num_kv_heads, self.head_dim = modules.head_sizes(dim, num_heads, num_kv_heads, head_dim)
        modules.check_dropout(dropout)
        if window is not None:
            modules.check_positive_int("window", window)
            if not causal:
                raise ValueError("window needs causal=True (a trailing window)")
        self.dim, self.causal, self.window = dim, causal, window
        self.rope_base = check_rope(rope)
        if self.rope_base is not None and self.head_dim % 2 != 0:
            raise ValueError(f"rope needs an even head_dim, got head_dim={self.head_dim}")
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(dim, hq * d, bias=bias)
        self.k_proj = nn.Linear(dim, hkv * d, bias=bias)
        self.v_proj = nn.Linear(dim, hkv * d, bias=bias)
        self.q_norm = modules.qk_norm(qk_norm, d, norm_eps)
        self.k_norm = modules.qk_norm(qk_norm, d, norm_eps)
        self.out_proj = nn.Linear(hq * d, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.register_load_state_dict_pre_hook(modules.split_fused_projection(self.IN_PROJECTIONS))
        self.reset_parameters()

    def reset_parameters(self):
        modules.init_projections([getattr(self, name) for name in self.IN_PROJECTIONS], self.out_proj)

    @property
    def local_kv_heads(self):
        """The kv heads this process computes: num_kv_heads, or its share under tensor parallelism."""
        return modules.local_out_features(self.k_proj) // self.head_dim

    def new_cache(self, batch_size, *, max_chunk=1, max_length=None, dtype=None, device=None):
        """A DotProductCache for this layer (causal only)."""
        if not self.causal:
            raise ValueError("a cache serves causal attention; this layer has causal=False")
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        device = self.q_proj.weight.device if device is None else device
        return DotProductCache(batch_size, self.local_kv_heads, self.head_dim, self.window, max_chunk=max_chunk,
                               max_length=max_length, dtype=dtype, device=device)  # fmt: skip

    def project(self, x, positions=None):
        """q [..., Hq, D], k, v [..., Hkv, D] from x [..., dim], RoPE applied at `positions` (default
        0 .. N-1), in the autocast dtype if any. Under tensor parallelism: this rank's heads."""
        if positions is None:
            positions = modules.positions_for(x, self.dim, None, None, None)
        d = self.head_dim
        q = self.q_norm(self.q_proj(x).unflatten(-1, (-1, d)))
        k = self.k_norm(self.k_proj(x).unflatten(-1, (-1, d)))
        v = self.v_proj(x).unflatten(-1, (-1, d))
        if self.rope_base is not None:
            cos, sin = rotary_tables(positions, self.head_dim // 2, self.rope_base)
            q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        dtype = modules.op_dtype(v)
        return tuple(t.to(dtype) for t in (q, k, v))

    def forward(self, x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
        modules.check_input(x, self.out_proj.weight)
        positions = modules.positions_for(x, self.dim, positions, cu_seqlens, cache)
        q, k, v = self.project(x, positions)
        if cache is not None:
            out = cache.attend(*(t.to(cache.dtype) for t in (q, k, v)))
        else:
            gqa = k.shape[-2] != q.shape[-2]
            if cu_seqlens is not None:
                out = _packed_sdpa(q, k, v, cu_seqlens, max_seqlen, self.causal, self.window, gqa)
            else:
                unbatched = x.dim() == 2
                if unbatched:
                    q, k, v = q[None], k[None], v[None]
                mask = None
                if self.window is not None:
                    i = torch.arange(x.shape[-2], device=x.device)
                    offset = i[:, None] - i[None, :]
                    mask = (offset >= 0) & (offset < self.window)
                out = F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                    is_causal=self.causal and mask is None, enable_gqa=gqa,
                ).transpose(1, 2)  # fmt: skip
                if unbatched:
                    out = out[0]
        return self.dropout(self.out_proj(out.flatten(-2)))
