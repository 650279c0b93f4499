r"""Data, context and tensor parallelism of a decoder on one device mesh, in torchtitan's order.

    mesh = init_device_mesh("cuda", (dp, cp, tp), mesh_dim_names=("dp", "cp", "tp"))
    parallelize(model, mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))

1. tensor parallelism (mesh["tp"]): every decoder block's attention and feed-forward layers by
   heads / hidden units (tensor.py's plans: ColwiseParallel in, RowwiseParallel out);
2. context parallelism (mesh["cp"]): every attention layer splits the sequence (layers.py);
3. FSDP2 (`fully_shard`) over the data ranks, dp x cp flattened (a context-parallel rank holds
   other tokens of the same batch, so its gradients are averaged like a data-parallel rank's):
   each decoder block, then the root.

The decoders it knows: `SimplicialForCausalLM` (simplicial_attn.hf), the examples' `Decoder`
(examples/model.py) and the torchtitan spec (parallel/titan): any module whose decoder blocks are
one ModuleList (or ModuleDict) of blocks holding `TwoSimplicialAttention` / `DotProductAttention`
layers. `apply` takes the meshes one by one, for trainers that build their own (torchtitan).
Embeddings, norms and the output head stay whole under tensor parallelism (sharded by FSDP only),
as DTensors replicated over the tensor-parallel ranks (tensor.ReplicateParallel), so that every
parameter lives on one mesh.

Losses and gradients equal one process's (tests/test_parallel_layouts.py) when every rank's loss
is the mean over its own tokens and the chunks are equal: FSDP's average over the dp x cp ranks
is then the mean over all tokens.
"""

from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from ..nn.layer import TwoSimplicialAttention
from ..nn.sdpa import DotProductAttention
from .layers import context_parallel
from .tensor import ReplicateParallel, block_plan

__all__ = ["apply", "data_mesh", "decoder_blocks", "parallelize"]

ATTENTION = (TwoSimplicialAttention, DotProductAttention)
DIMS = ("dp", "cp", "tp")


def decoder_blocks(model):
    """The decoder blocks of `model`: the first ModuleList (or torchtitan's ModuleDict) whose every entry
    holds an attention layer."""
    for module in model.modules():
        if isinstance(module, nn.ModuleDict):
            module = list(module.values())
        if isinstance(module, (nn.ModuleList, list)) and len(module) and all(_has_attention(b) for b in module):
            return list(module)
    raise ValueError(f"{type(model).__name__} has no ModuleList of decoder blocks with attention layers")


def _has_attention(module):
    return any(isinstance(m, ATTENTION) for m in module.modules())


def _size(mesh, name):
    return mesh[name].size() if name in mesh.mesh_dim_names else 1


def _check_mesh(mesh):
    names = mesh.mesh_dim_names
    if names is None or not set(names) <= set(DIMS) or list(names) != [n for n in DIMS if n in names]:
        raise ValueError(
            f"mesh: name its dimensions among {DIMS}, in that order (e.g. init_device_mesh(..., mesh_dim_names="
            f"('dp', 'cp', 'tp'))), got {names}"
        )


def data_mesh(mesh):
    """The mesh FSDP shards and averages over: dp and cp flattened (None when both are 1)."""
    _check_mesh(mesh)
    dims = [n for n in ("dp", "cp") if _size(mesh, n) > 1]
    if not dims:
        return None
    if len(dims) == 1:
        return mesh[dims[0]]
    flat = "dp_cp"
    try:
        return mesh[flat]
    except KeyError:
        return mesh["dp", "cp"]._flatten(flat)


def parallelize(model, mesh, *, mp_policy=None, reshard_after_forward=True):
    """Applies tensor, context and data parallelism (module doc) to `model` in place; returns it.

    mesh: a DeviceMesh whose dimensions are named among "dp", "cp", "tp", in that order (absent or
    size 1: not applied). mp_policy: FSDP2's MixedPrecisionPolicy (e.g. bf16 parameters, fp32
    gradient reduction). reshard_after_forward: FSDP2's (True frees the gathered parameters after
    each block's forward).
    """
    _check_mesh(mesh)
    meshes = {name: mesh[name] if _size(mesh, name) > 1 else None for name in ("tp", "cp")}
    return apply(model, tp_mesh=meshes["tp"], cp_mesh=meshes["cp"], data_mesh=data_mesh(mesh), mp_policy=mp_policy,
                 reshard_after_forward=reshard_after_forward)  # fmt: skip


def apply(model, *, tp_mesh=None, cp_mesh=None, data_mesh=None, mp_policy=None, reshard_after_forward=True):
    """`parallelize` on meshes given one by one (None: that parallelism is off): what a trainer with its
    own mesh bookkeeping calls (the torchtitan spec). data_mesh may be 2-D (replicate, shard): HSDP."""
    blocks = decoder_blocks(model)
    if tp_mesh is not None:
        for block in blocks:
            parallelize_module(block, tp_mesh, block_plan(block, tp_mesh.size(), ATTENTION))
        for module in list(model.modules()):  # what the plans left whole: replicated DTensors (ReplicateParallel)
            if any(not isinstance(p, DTensor) for p in module.parameters(recurse=False)):
                parallelize_module(module, tp_mesh, ReplicateParallel())
    if cp_mesh is not None:
        context_parallel(model, cp_mesh)
    if data_mesh is not None:
        options = dict(mesh=data_mesh, reshard_after_forward=reshard_after_forward)
        if mp_policy is not None:
            options["mp_policy"] = mp_policy
        for block in blocks:
            fully_shard(block, **options)
        fully_shard(model, **options)
    return model
