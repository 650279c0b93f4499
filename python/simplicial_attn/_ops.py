"""The torch.library registration: the fused op and its backward, autograd linking them, the
decoding op, and fake (meta) kernels so torch.compile traces through without graph breaks.

    simplicial_attn::attention(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, left1, right1, left2, right2,
                               scale, logits, backend) -> (out, lse, lse_lo)
    simplicial_attn::attention_backward(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens,
                               max_seqlen, left1, right1, left2, right2, scale, logits, backend)
                               -> (dq, dk1, dk2, dv1, dv2)
    simplicial_attn::attention_with_kvcache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens,
                               k1, k2, v1, v2, w1, w2, scale, logits, backend) -> (out, lse)

They take a concrete backend name (the public functions resolve "auto" before the call). The
fused ops take the kernel bands (problem.window_band: the reaches of the k1/v1 and k2/v2
windows, None already resolved); the cache op takes the user's causal windows, which it turns
into bands against its ring sizes. Each builds the call's one `Problem` (problem.py) and hands
it to the backend. Called directly, they check their
arguments too (a clear error, never a silently wrong result). They are Python custom ops, so
they exist whether or not the C++ extension was built; the C++ kernels are the schemas
`simplicial_attn::fused_fwd` / `fused_bwd` / `fused_decode` (csrc/ops.cpp) that the "cpu" and
"cuda" backends call, with fake kernels registered here too.

`lse_lo` is the rounding residual of lse (README "Numerics"): the backward needs it, users never see it.
"""

import torch

from . import _ext, _validate, backends, reference
from .problem import Band, Problem, window_band


def _empty_outputs(q):
    B, N, Hq, _ = q.shape
    lse = q.new_empty((B, Hq, N), dtype=reference.compute_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse, torch.empty_like(lse)


def _empty_grads(q, k1, k2, v1, v2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))


def _problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits, backend):
    """The checked Problem of a direct op call (the public functions have checked the tensors)."""
    bands = (left1, right1, left2, right2)
    cu_seqlens = _validate.check_op_args(q, cu_seqlens, max_seqlen, bands, scale, logits, backend)
    return Problem(Band(left1, right1), Band(left2, right2), scale, logits, cu_seqlens, max_seqlen)


@torch.library.custom_op("simplicial_attn::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    v1: torch.Tensor,
    v2: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    left1: int,
    right1: int,
    left2: int,
    right2: int,
    scale: float,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _validate.check_tensors(q, k1, k2, v1, v2)
    prob = _problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:  # B == 0 or N == 0: nothing to launch
        return _empty_outputs(q)
    return backends.get(backend).fwd(q, k1, k2, v1, v2, prob)


@attention.register_fake
def _(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits, backend):
    return _empty_outputs(q)


@torch.library.custom_op("simplicial_attn::attention_backward", mutates_args=())
def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    v1: torch.Tensor,
    v2: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    lse_lo: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    left1: int,
    right1: int,
    left2: int,
    right2: int,
    scale: float,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _validate.check_tensors(q, k1, k2, v1, v2)
    prob = _problem(q, cu_seqlens, max_seqlen, left1, right1, left2, right2, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))
    dout = dout.contiguous()  # autograd may hand in an expanded (stride-0) gradient
    return backends.get(backend).bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob)


@attention_backward.register_fake
def _(
    dout,
    q,
    k1,
    k2,
    v1,
    v2,
    out,
    lse,
    lse_lo,
    cu_seqlens,
    max_seqlen,
    left1,
    right1,
    left2,
    right2,
    scale,
    logits,
    backend,
):
    return _empty_grads(q, k1, k2, v1, v2)


def _setup_context(ctx, inputs, output):
    q, k1, k2, v1, v2, cu_seqlens, *args = inputs
    out, lse, lse_lo = output
    ctx.save_for_backward(q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens)
    ctx.args = args  # max_seqlen, left1, right1, left2, right2, scale, logits, backend
    # Like flash-attn, lse is an auxiliary output: gradients flow through `out` only.
    ctx.mark_non_differentiable(lse, lse_lo)


def _backward(ctx, dout, dlse, dlse_lo):
    q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens = ctx.saved_tensors
    grads = attention_backward(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, *ctx.args)
    return (*grads, *([None] * 9))


attention.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(
    "simplicial_attn::attention_with_kvcache", mutates_args=("k1_cache", "k2_cache", "v1_cache", "v2_cache")
)
def attention_with_kvcache(
    q: torch.Tensor,
    k1_cache: torch.Tensor,
    k2_cache: torch.Tensor,
    v1_cache: torch.Tensor,
    v2_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k1: torch.Tensor | None,
    k2: torch.Tensor | None,
    v1: torch.Tensor | None,
    v2: torch.Tensor | None,
    w1: int | None,
    w2: int | None,
    scale: float,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_cache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, (k1, k2, v1, v2), w1, w2)
    rings = (k1_cache.shape[1], k2_cache.shape[1])
    _validate.check_cache_lengths(cache_seqlens, q.shape[1], (w1, w2), rings)
    # Kernel bands: None reaches every position a linear cache holds; a window never needs more
    # than the ring's slots (check_cache_lengths made sure nothing it needs was overwritten).
    band1, band2 = (window_band(w, True, ring) for w, ring in zip((w1, w2), rings, strict=True))
    _validate.check_op_args(q, None, 0, (*band1, *band2), scale, logits, backend)
    B, Nq, Hq, _ = q.shape
    if k1 is not None:
        # Position L_b + t goes to slot (L_b + t) % C, before any query reads the cache.
        rows = torch.arange(B, device=q.device)[:, None]
        pos = cache_seqlens.long()[:, None] + torch.arange(Nq, device=q.device)
        for cache, new in ((k1_cache, k1), (v1_cache, v1), (k2_cache, k2), (v2_cache, v2)):
            cache[rows, pos % cache.shape[1]] = new.to(cache.dtype)
    if B == 0 or Nq == 0:
        return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=reference.compute_dtype(q.dtype))
    prob = Problem(band1, band2, scale, logits, cache_seqlens=cache_seqlens)
    return backends.get(backend).decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob)


@attention_with_kvcache.register_fake
def _(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, k1, k2, v1, v2, w1, w2, scale, logits, backend):
    B, Nq, Hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=reference.compute_dtype(q.dtype))


if _ext.extension_loaded():

    @torch.library.register_fake("simplicial_attn::fused_fwd")
    def _(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, *problem):
        return _empty_outputs(q)

    @torch.library.register_fake("simplicial_attn::fused_bwd")
    def _(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, max_seqlen, *problem):
        return _empty_grads(q, k1, k2, v1, v2)

    @torch.library.register_fake("simplicial_attn::fused_decode")
    def _(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, *problem):
        B, Nq, Hq, _ = q.shape
        return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=reference.compute_dtype(q.dtype))
