"""The torch.library registration: the fused op and its backward, autograd linking them, the
decoding op, and fake (meta) kernels so torch.compile traces through without graph breaks.

    simplicial_attn::attention(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, causal, scale,
                               logits, backend) -> (out, lse, lse_lo)
    simplicial_attn::attention_backward(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens,
                               max_seqlen, w1, w2, causal, scale, logits, backend) -> (dq, dk1, dk2, dv1, dv2)
    simplicial_attn::attention_with_kvcache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens,
                               k1, k2, v1, v2, w1, w2, scale, logits, backend) -> (out, lse)

They take the public functions' arguments (windows int >= 1 or None, scale None for the
default, backend "auto" or a name; a packed call's tensors as [1, T, H, D], max_seqlen None to
compute it) and are where a call is checked and resolved, once: the value rules of CONTRACT §4,
§6, §7 (checks.py; the public functions have checked the argument types the schemas need), the
backend (backends.select), and the call's one `Problem` (problem.py: windows become bands
against the longest sequence). Called directly, they check the same rules. They are Python
custom ops, so they exist whether or not the C++ extension was built; the C++ kernels are the
schemas `simplicial_attn::fused_fwd` / `fused_bwd` / `fused_decode` (csrc/ops.cpp) that the
"cpu" and "cuda" backends call, with fake kernels registered here too.

`lse_lo` is the rounding residual of lse (README "Numerics"): the backward needs it, users never see it.
"""

import torch

from .. import backends
from ..backends import extension
from ..problem import Problem, compute_dtype, window_band
from . import checks


def _empty_outputs(q):
    B, N, Hq, _ = q.shape
    lse = q.new_empty((B, Hq, N), dtype=compute_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse, torch.empty_like(lse)


def _empty_grads(q, k1, k2, v1, v2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))


def _check(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, scale, logits):
    """The value rules that read no tensor data, so the fake kernels check them too (a meta tensor
    among the inputs sends the call to the fake kernel). Batched tensors are [B, N, H, D]; packed
    ones (cu_seqlens given) [1, T, H, D], checked as the [T, H, D] the caller packed. Returns D."""
    tensors = (q, k1, k2, v1, v2)
    if cu_seqlens is not None:
        for name, t in zip(checks.ATTENTION_INPUTS, tensors, strict=True):
            if t.dim() == 0 or t.shape[0] != 1:
                raise ValueError(f"packed inputs reach the op as [1, T, H, D]; got {name} of shape {tuple(t.shape)}")
        tensors = tuple(t[0] for t in tensors)
        checks.check_cu_seqlens_tensor(cu_seqlens, q.device)
        checks.check_max_seqlen(max_seqlen)
    _, _, D = checks.check_tensors(*tensors, packed=cu_seqlens is not None)
    checks.check_window_size("w1", w1)
    checks.check_window_size("w2", w2)
    checks.check_scale(scale)
    checks.check_logits(logits, D)
    return D


def _resolve(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend):
    """The checked call: (Problem, backend name)."""
    D = _check(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, scale, logits)
    name = backends.select(backend, q.device, q.dtype)
    longest, cu = q.shape[1], None
    if cu_seqlens is not None:
        cu, longest = checks.check_packing(cu_seqlens, max_seqlen, q.shape[1])
    scale = D**-0.5 if scale is None else scale
    band1, band2 = window_band(w1, causal, longest), window_band(w2, causal, longest)
    return Problem(band1, band2, scale, logits, cu, longest if cu is not None else 0), name


@torch.library.custom_op("simplicial_attn::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    v1: torch.Tensor,
    v2: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    w1: int | None,
    w2: int | None,
    causal: bool,
    scale: float | None,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prob, name = _resolve(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:  # B == 0 or N == 0: nothing to launch
        return _empty_outputs(q)
    return backends.get(name).fwd(q, k1, k2, v1, v2, prob)


@attention.register_fake
def _(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend):
    _check(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, scale, logits)
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
    max_seqlen: int | None,
    w1: int | None,
    w2: int | None,
    causal: bool,
    scale: float | None,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    prob, name = _resolve(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))
    dout = dout.contiguous()  # autograd may hand in an expanded (stride-0) gradient
    return backends.get(name).bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob)


@attention_backward.register_fake
def _(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, max_seqlen, w1, w2, causal, scale, logits, backend):
    _check(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, w1, w2, scale, logits)
    return _empty_grads(q, k1, k2, v1, v2)


def _setup_context(ctx, inputs, output):
    q, k1, k2, v1, v2, cu_seqlens, *args = inputs
    out, lse, lse_lo = output
    ctx.save_for_backward(q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens)
    # max_seqlen, w1, w2, causal, scale, logits, and the backend the forward ran (so the backward
    # reads lse_lo from the backend that wrote it, whatever "auto" would pick later)
    ctx.args = (*args[:-1], backends.select(args[-1], q.device, q.dtype))
    # Like flash-attn, lse is an auxiliary output: gradients flow through `out` only.
    ctx.mark_non_differentiable(lse, lse_lo)


def _backward(ctx, dout, dlse, dlse_lo):
    q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens = ctx.saved_tensors
    grads = attention_backward(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, *ctx.args)
    return (*grads, *([None] * 8))


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
    scale: float | None,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    checks.check_cache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, (k1, k2, v1, v2), w1, w2)
    caches = {"k1_cache": k1_cache, "k2_cache": k2_cache, "v1_cache": v1_cache, "v2_cache": v2_cache}
    checks.check_cache_memory(caches, writing=k1 is not None)
    rings = (k1_cache.shape[1], k2_cache.shape[1])
    checks.check_cache_lengths(cache_seqlens, q.shape[1], (w1, w2), rings)
    checks.check_scale(scale)
    checks.check_logits(logits, q.shape[3])
    name = backends.select(backend, q.device, q.dtype)
    # Kernel bands: None reaches every position a linear cache holds; a window never needs more
    # than the ring's slots (check_cache_lengths made sure nothing it needs was overwritten).
    band1, band2 = (window_band(w, True, ring) for w, ring in zip((w1, w2), rings, strict=True))
    B, Nq, Hq, D = q.shape
    if k1 is not None:
        # Position L_b + t goes to slot (L_b + t) % C, before any query reads the cache.
        rows = torch.arange(B, device=q.device)[:, None]
        pos = cache_seqlens.long()[:, None] + torch.arange(Nq, device=q.device)
        for cache, new in ((k1_cache, k1), (v1_cache, v1), (k2_cache, k2), (v2_cache, v2)):
            cache[rows, pos % cache.shape[1]] = new.to(cache.dtype)
    if B == 0 or Nq == 0:
        return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=compute_dtype(q.dtype))
    prob = Problem(band1, band2, D**-0.5 if scale is None else scale, logits, cache_seqlens=cache_seqlens)
    return backends.get(name).decode(q, k1_cache, k2_cache, v1_cache, v2_cache, prob)


@attention_with_kvcache.register_fake
def _(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, k1, k2, v1, v2, w1, w2, scale, logits, backend):
    checks.check_cache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, (k1, k2, v1, v2), w1, w2)
    B, Nq, Hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=compute_dtype(q.dtype))


if extension.extension_loaded():

    @torch.library.register_fake("simplicial_attn::fused_fwd")
    def _(q, k1, k2, v1, v2, cu_seqlens, max_seqlen, *problem):
        return _empty_outputs(q)

    @torch.library.register_fake("simplicial_attn::fused_bwd")
    def _(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, max_seqlen, *problem):
        return _empty_grads(q, k1, k2, v1, v2)

    @torch.library.register_fake("simplicial_attn::fused_decode")
    def _(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, *problem):
        B, Nq, Hq, _ = q.shape
        return torch.empty_like(q), q.new_empty((B, Hq, Nq), dtype=compute_dtype(q.dtype))
