"""Parallelism on PyTorch's own distributed stack: one device mesh, FSDP2, tensor and context parallelism.

    from simplicial_attn.parallel import two_simplicial_attention_cp   # context parallelism (context.py)

context.py   the sequence split across ranks: a halo exchange (comm.py) per attention call
layers.py    the attention layers under context parallelism (`context_parallel(model, mesh["cp"])`)
tensor.py    tensor parallelism by heads: DTensor sharding rules for the ops (registered on import)
             and ColwiseParallel / RowwiseParallel plans for the layers
decoder.py   `parallelize(model, mesh)`: tensor, context and FSDP2 data parallelism of a decoder;
             `apply(model, tp_mesh=, cp_mesh=, data_mesh=)`: the same on separate meshes (torchtitan's)
"""

from . import tensor  # noqa: F401  (registers the DTensor sharding rules of the ops)
from .context import (
    ChunkLayout,
    CommStats,
    chunk_layout,
    comm_stats,
    dot_product_attention_cp,
    halo_plan,
    simplicial_reaches,
    two_simplicial_attention_cp,
)
from .decoder import apply, parallelize
from .layers import context_parallel

__all__ = [
    "apply",
    "ChunkLayout",
    "CommStats",
    "chunk_layout",
    "comm_stats",
    "context_parallel",
    "dot_product_attention_cp",
    "halo_plan",
    "parallelize",
    "simplicial_reaches",
    "two_simplicial_attention_cp",
]
