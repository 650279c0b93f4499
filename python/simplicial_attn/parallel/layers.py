r"""The attention layers under context parallelism.

    context_parallel(model, mesh["cp"])        # every attention layer inside `model` now splits the sequence
    logits = model(tokens[:, start:stop])      # rank r passes its chunk of every sequence (and the global cu_seqlens)

`context_parallel` gives each `TwoSimplicialAttention` and `DotProductAttention` inside a model a
forward that treats its input as this rank's chunk of the sequence: one all_gather of the chunk
sizes (which also checks that the ranks agree on the batch, dtype, windows, logits form and
packing), RoPE at the chunk's global positions (restarting at every document of a packed
sequence), the layer's own projections (local heads under tensor parallelism), then the
halo-exchange attention of context.py and the layer's output projection. Everything else in a
model (embeddings, norms, MLPs, the head) is token-wise and needs nothing. Parameters are
untouched: the same state dict, checkpoints and FSDP / TP plans.

Layouts: x [B, n, dim] (the chunk of B sequences) or packed [n, dim] with cu_seqlens (the global
packing of the whole token stream, the same on every rank; documents may cross ranks). The
generation cache is refused: decoding runs on one rank (or under tensor parallelism).
"""

import types

from .. import backends
from ..nn.layer import TwoSimplicialAttention
from ..nn.sdpa import DotProductAttention
from . import context

__all__ = ["context_parallel"]


def context_parallel(model, group):
    """Makes every attention layer of `model` (itself included) split the sequence across `group`
    (a ProcessGroup or a 1-D DeviceMesh such as mesh["cp"]); returns `model`."""
    context.resolve_group(group)  # fails early: a bad group, or no process group
    found = False
    for module in model.modules():
        if isinstance(module, TwoSimplicialAttention):
            forward = _simplicial_forward
        elif isinstance(module, DotProductAttention):
            forward = _dot_product_forward
        else:
            continue
        module.context_parallel_group = group
        module.forward = types.MethodType(forward, module)
        found = True
    if not found:
        raise ValueError(
            f"context_parallel: {type(model).__name__} holds no TwoSimplicialAttention or DotProductAttention layer"
        )
    return model


def _layout(module, x, positions, cu_seqlens, cache, agree):
    if cache is not None:
        raise ValueError(
            "a layer under context parallelism takes whole sequences split across ranks, not a generation cache "
            "(decode on one rank, or under tensor parallelism)"
        )
    if x.dim() not in (2, 3) or x.shape[-1] != module.dim:
        raise ValueError(
            f"x must be this rank's chunk [B, n, dim] (or packed [n, dim] with the global cu_seqlens) with dim = "
            f"{module.dim}, got shape {tuple(x.shape)}"
        )
    packed = cu_seqlens is not None
    if packed and x.dim() != 2:
        raise ValueError(f"with cu_seqlens, x must be this rank's packed tokens [n, dim], got shape {tuple(x.shape)}")
    agree = (("B", -1 if x.dim() == 2 else x.shape[0]), ("dtype", x.dtype), *agree)
    layout = context.chunk_layout(x.shape[-2], module.context_parallel_group, cu_seqlens=cu_seqlens, agree=agree,
                                  device=x.device)  # fmt: skip
    if positions is None:
        positions = layout.positions(x.device)
    return layout, positions


def _unbatched(x, cu_seqlens):
    """One unbatched sequence [n, dim] (no cu_seqlens) runs as a batch of one."""
    return x.dim() == 2 and cu_seqlens is None


def _simplicial_forward(self, x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
    if _unbatched(x, cu_seqlens):
        return _simplicial_forward(self, x[None], positions, cache=cache)[0]
    agree = (("w1", self.w1), ("w2", self.w2), ("causal", self.causal), ("logits", self.logits))
    layout, positions = _layout(self, x, positions, cu_seqlens, cache, agree)
    q, k1, k2, v1, v2 = self.project(x, positions)
    backend = backends.select(self.backend, q.device, q.dtype)
    out = context.simplicial_chunk(q, k1, k2, v1, v2, layout, self.w1, self.w2, self.causal, self.head_dim**-0.5,
                                   self.logits, backend)  # fmt: skip
    return self.dropout(self.out_proj(out.flatten(-2)))


def _dot_product_forward(self, x, positions=None, *, cu_seqlens=None, max_seqlen=None, cache=None):
    if _unbatched(x, cu_seqlens):
        return _dot_product_forward(self, x[None], positions, cache=cache)[0]
    agree = (("window", self.window), ("causal", self.causal))
    layout, positions = _layout(self, x, positions, cu_seqlens, cache, agree)
    q, k, v = self.project(x, positions)
    out = context.dot_product_chunk(q, k, v, layout, self.window, self.causal)
    return self.dropout(self.out_proj(out.flatten(-2)))


def is_context_parallel(module):
    """Whether `context_parallel` put this attention layer under context parallelism."""
    return getattr(module, "context_parallel_group", None) is not None
