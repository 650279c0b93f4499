r"""Tensor parallelism by heads: DTensor sharding rules for the ops, and plans for the layers.

Every query head is independent, and query head h reads kv head h // (Hq / Hkv) only; so with
Hq and Hkv both split into T equal contiguous blocks, rank t's query heads read exactly rank
t's kv heads (the group size Hq / Hkv is the same locally). That is the whole of tensor
parallelism for this op: each rank runs the op on its local heads, with no communication.

1. The ops on DTensors. Importing `simplicial_attn.parallel` registers a sharding rule for
   `simplicial_attn::attention` and `simplicial_attn::attention_backward`, so
   `two_simplicial_attention` (and `_varlen`) accept DTensor inputs. On each mesh dimension an
   input may be

       Shard(2)    heads [B, N, H, D]: the local op on local heads (out Shard(2), lse Shard(1));
                   Hq and Hkv must be multiples of the mesh dimension's size (else ValueError)
       Shard(0)    batch (not with cu_seqlens, whose packing is one row): the local op on local rows
       Replicate   every rank computes everything (as one process)
       Partial     redistributed to Replicate first (DTensor does it: the op is not linear)

   Sequence sharding, Shard(1), raises ValueError: a window crosses the chunk boundary, which
   takes the halo exchange of `two_simplicial_attention_cp`, not a DTensor redistribution.
   Shard(3) (head_dim) raises too: the logits sum over d before a softmax. Inputs that disagree
   (q Shard(2), k1 Replicate, ...) are redistributed to one of the layouts above; a packed call's
   cu_seqlens must then be a replicated DTensor as well (DTensor refuses to mix it with plain
   tensors). The decoding op (`attention_with_kvcache`) has no rule: under tensor parallelism the
   layers call it on local tensors (below).

2. The layers. `TwoSimplicialAttention` (and the SDPA twin) keep separate input projections,
   so the standard styles apply: `ColwiseParallel` on q_proj, k1_proj, k2_proj, v1_proj, v2_proj
   (each rank computes its heads' columns), `RowwiseParallel` on out_proj (the partial sums
   all-reduced). The projections hand the layer local tensors (`use_local_output=True`), and the
   layer reads the head counts off their shapes, so the op runs on local tensors: rule 1 is not
   involved. `attention_plan`, `mlp_plan` and `block_plan` give those plans; `parallelize.py`
   applies them to the models.
"""

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.experimental import register_sharding
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel

from ..ops import library  # noqa: F401  (defines the ops this module registers rules for)

__all__ = ["ReplicateParallel", "attention_plan", "block_plan", "check_head_sharding", "mlp_plan"]

_OPS = torch.ops.simplicial_attn
_HEADS, _BATCH, _SEQUENCE, _HEAD_DIM = 2, 0, 1, 3


def _dim(placement, ndim=4):
    return placement.dim % ndim if isinstance(placement, Shard) else None


def check_head_sharding(q, kv):
    """ValueError unless the DTensor specs (or DTensors) q [B, N, Hq, D] and kv [B, N, Hkv, D] are
    sharded in a way the op can run locally (module doc): names the mesh dimension and the sizes."""
    hq, hkv = q.shape[_HEADS], kv.shape[_HEADS]
    for spec in (q, kv):
        for mesh_dim, placement in enumerate(spec.placements):
            dim = _dim(placement)
            if dim == _SEQUENCE:
                raise ValueError(
                    f"2-simplicial attention on a DTensor sharded along the sequence (Shard(1) on mesh dimension "
                    f"{mesh_dim}): a window crosses the chunk boundary, so use "
                    "simplicial_attn.parallel.two_simplicial_attention_cp (a halo exchange), or redistribute"
                )
            if dim == _HEAD_DIM:
                raise ValueError(
                    f"2-simplicial attention on a DTensor sharded along head_dim (Shard(3) on mesh dimension "
                    f"{mesh_dim}): the logits sum over head_dim before the softmax; shard the heads (Shard(2))"
                )
            if dim == _HEADS:
                size = spec.mesh.size(mesh_dim)
                if hq % size or hkv % size:
                    raise ValueError(
                        f"sharding the heads over mesh dimension {mesh_dim} of size {size} needs the query heads "
                        f"({hq}) and the kv heads ({hkv}) to be multiples of {size}: query head h reads kv head "
                        "h // (Hq / Hkv), which must stay on the same rank"
                    )


def _layouts(q, cu_seqlens):
    """The single-mesh-dimension layouts: (placement of [B, N, H, D] tensors, of [B, H, N] ones) per rule."""
    layouts = [(Replicate(), Replicate()), (Shard(_HEADS), Shard(1))]
    if cu_seqlens is None:
        layouts.append((Shard(_BATCH), Shard(0)))
    return layouts


def _cu_placement(cu_seqlens):
    return None if cu_seqlens is None else Replicate()


@register_sharding(_OPS.attention.default)
def _attention_sharding(q, k1, k2, v1, v2, cu_seqlens, *args):
    check_head_sharding(q, k1)
    rules = []
    for rows, stats in _layouts(q, cu_seqlens):
        outputs = [rows, stats, stats]  # out, lse, lse_lo
        inputs = [rows] * 5 + [_cu_placement(cu_seqlens)] + [None] * len(args)  # args: no tensors
        rules.append((outputs, inputs))
    return rules


@register_sharding(_OPS.attention_backward.default)
def _attention_backward_sharding(dout, q, k1, k2, v1, v2, out, lse, lse_lo, cu_seqlens, *args):
    check_head_sharding(q, k1)
    rules = []
    for rows, stats in _layouts(q, cu_seqlens):
        outputs = [rows] * 5  # dq, dk1, dk2, dv1, dv2
        inputs = [rows] * 7 + [stats, stats, _cu_placement(cu_seqlens)] + [None] * len(args)
        rules.append((outputs, inputs))
    return rules


# Feed-forward layers by their projections' names: the package's MLP (up, down), the HF model's
# SwiGLU (gate_proj, up_proj, down_proj) and torchtitan's (w1, w3 in; w2 out).
_MLP_IN = ("up", "gate_proj", "up_proj", "w1", "w3")
_MLP_OUT = ("down", "down_proj", "w2")


def attention_plan(attn, tp_size):
    """The `parallelize_module` plan of one attention module (`TwoSimplicialAttention` or
    `DotProductAttention`), keys relative to it: its input projections column-wise (each rank
    computes its heads), out_proj row-wise (partial sums all-reduced). ValueError unless the
    query and kv heads split evenly over `tp_size` ranks."""
    hq, hkv = attn.num_heads, attn.num_kv_heads
    if hq % tp_size or hkv % tp_size:
        raise ValueError(
            f"tensor parallelism of degree {tp_size} splits the heads of {type(attn).__name__}: its query heads "
            f"({hq}) and kv heads ({hkv}) must be multiples of {tp_size}"
        )
    plan = {name: ColwiseParallel() for name in attn.IN_PROJECTIONS}
    plan["out_proj"] = RowwiseParallel()
    # The per-head q/k norms share one gain across heads: on a rank's local heads its gradient is a
    # partial sum. As a replicated DTensor, applied to the heads as Shard(-2), DTensor sums it.
    for name, norm in attn.named_children():
        if name.endswith("_norm") and any(True for _ in norm.parameters()):
            plan[name] = SequenceParallel(sequence_dim=-2, use_local_output=True)
    return plan


def mlp_plan(mlp):
    """The plan of a feed-forward layer: its input projections column-wise, its output row-wise."""
    names = {name for name, _ in mlp.named_children()}
    into, out = [n for n in _MLP_IN if n in names], [n for n in _MLP_OUT if n in names]
    if not into or len(out) != 1:
        raise ValueError(
            f"{type(mlp).__name__} is not a feed-forward layer this plan knows (linear layers named {_MLP_IN} in "
            f"and one of {_MLP_OUT} out), it has {sorted(names)}"
        )
    return {**{n: ColwiseParallel() for n in into}, out[0]: RowwiseParallel()}


def block_plan(block, tp_size, attention_types):
    """The plan of one decoder block: every attention module (of `attention_types`) and the
    feed-forward layer (the module named mlp, feed_forward or ffn) inside it, keys relative to it
    (a wrapper around the block, e.g. for activation checkpointing, is fine)."""
    plan = {}
    for name, module in block.named_modules():
        if isinstance(module, attention_types):
            plan.update({f"{name}.{k}": v for k, v in attention_plan(module, tp_size).items()})
        elif name.rpartition(".")[2] in ("mlp", "feed_forward", "ffn"):
            plan.update({f"{name}.{k}": v for k, v in mlp_plan(module).items()})
    return plan


class ReplicateParallel(ParallelStyle):
    """The parameters of a module that tensor parallelism does not split (embeddings, norms, the head) as
    DTensors replicated over the tensor-parallel ranks; its input and output stay local tensors.

    The computation is what it was (every rank holds the same activations there, and computes the same
    gradients), but then every parameter of the model is a DTensor on the tensor-parallel mesh (on the
    2-D data x tensor mesh once FSDP shards it), as the trainers' gradient clipping expects: a global
    norm over parameters of different meshes fails ("All operands ... must have the same mesh")."""

    def _apply(self, module, device_mesh):
        def replicate(name, mod, mesh):
            for key, param in list(mod.named_parameters(recurse=False)):
                if not isinstance(param, DTensor):
                    local = DTensor.from_local(param.data, mesh, [Replicate()], run_check=False)
                    mod.register_parameter(key, nn.Parameter(local, requires_grad=param.requires_grad))

        def to_dtensor(mod, inputs, mesh):
            return tuple(
                DTensor.from_local(x, mesh, [Replicate()], run_check=False)
                if isinstance(x, torch.Tensor) and not isinstance(x, DTensor) else x
                for x in inputs
            )  # fmt: skip

        def to_local(mod, outputs, mesh):
            return outputs.to_local() if isinstance(outputs, DTensor) else outputs

        return distribute_module(module, device_mesh, replicate, input_fn=to_dtensor, output_fn=to_local)
