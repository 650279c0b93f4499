"""The torch.library registration: one op for the forward, one for the backward, autograd
linking them, and fake (meta) kernels so torch.compile traces through without graph breaks.

    simplicial_attn::attention(q, k1, k2, v1, v2, w1, w2, causal, scale, backend) -> (out, lse)
    simplicial_attn::attention_backward(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal,
                                        scale, backend) -> (dq, dk1, dk2, dv1, dv2)

Both take a concrete backend name (api.py resolves "auto" before the call) and integer
windows (None already turned into a covering window). They are Python custom ops, so they
exist whether or not the C++ extension was built; the C++ kernels are the schemas
`simplicial_attn::fused_fwd` / `fused_bwd` (csrc/ops.cpp) that the "cpu" and "cuda" backends
call, with fake kernels registered here too.
"""

import torch

from . import _ext, backends, reference


def _empty_outputs(q):
    B, N, Hq, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (B, Hq, N), dtype=reference.compute_dtype(q.dtype)
    )


def _empty_grads(q, k1, k2, v1, v2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))


@torch.library.custom_op("simplicial_attn::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    v1: torch.Tensor,
    v2: torch.Tensor,
    w1: int,
    w2: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if q.shape[0] == 0 or q.shape[1] == 0:  # B == 0 or N == 0: nothing to launch
        return _empty_outputs(q)
    return backends.get(backend).fwd(q, k1, k2, v1, v2, w1, w2, causal, scale)


@attention.register_fake
def _(q, k1, k2, v1, v2, w1, w2, causal, scale, backend):
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
    w1: int,
    w2: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.shape[0] == 0 or q.shape[1] == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))
    dout = dout.contiguous()  # autograd may hand in an expanded (stride-0) gradient
    return backends.get(backend).bwd(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale)


@attention_backward.register_fake
def _(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale, backend):
    return _empty_grads(q, k1, k2, v1, v2)


def _setup_context(ctx, inputs, output):
    q, k1, k2, v1, v2, w1, w2, causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k1, k2, v1, v2, out, lse)
    ctx.args = (w1, w2, causal, scale, backend)
    # Like flash-attn, lse is an auxiliary output: gradients flow through `out` only.
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k1, k2, v1, v2, out, lse = ctx.saved_tensors
    grads = attention_backward(dout, q, k1, k2, v1, v2, out, lse, *ctx.args)
    return (*grads, None, None, None, None, None)


attention.register_autograd(_backward, setup_context=_setup_context)


if _ext.extension_loaded():

    @torch.library.register_fake("simplicial_attn::fused_fwd")
    def _(q, k1, k2, v1, v2, w1, w2, causal, scale):
        return _empty_outputs(q)

    @torch.library.register_fake("simplicial_attn::fused_bwd")
    def _(dout, q, k1, k2, v1, v2, out, lse, w1, w2, causal, scale):
        return _empty_grads(q, k1, k2, v1, v2)
