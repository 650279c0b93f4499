"""The spec's parallelize function: torchtitan's FSDP / TP / CP settings through `simplicial_attn.parallel`.

torchtitan's trainer builds the model on the meta device, calls `parallelize_simplicial(model,
parallel_dims, job_config)`, then materialises and initialises it. From its ParallelDims this takes

    tp     parallelism.tensor_parallel_degree       -> heads (tensor.py's plans)
    cp     parallelism.context_parallel_degree      -> the halo exchange (layers.py)
    fsdp   data_parallel_shard_degree x cp          -> FSDP2 on each block and the root (HSDP with
           (and data_parallel_replicate_degree)        data_parallel_replicate_degree > 1)

with torchtitan's mixed precision (training.mixed_precision_param / _reduce) and
fsdp_reshard_after_forward. As torchtitan's own models do, it turns FSDP's gradient division off:
the trainer divides each rank's summed loss by the global number of tokens.

Two settings differ from torchtitan's defaults, both because the 2-simplicial layers need
contiguous chunks: context_parallel_load_balancer is set to None (torchtitan's head-tail balancing
reorders the tokens for full causal attention; windowed attention costs the same on every chunk)
and loss parallelism is off (the head is not sharded). Activation checkpointing: "none" or
"full" (each block wrapped); selective and memory-budget modes are not supported.
"""

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

from .. import decoder

__all__ = ["parallelize_simplicial"]


def parallelize_simplicial(model, parallel_dims, job_config):
    """torchtitan's parallelize_fn for `SimplicialTitanModel` (module doc); returns the model."""
    if parallel_dims.pp_enabled:
        raise ValueError("the 2-simplicial spec has no pipeline parallelism (pipeline_parallel_degree must be 1)")
    ac = job_config.activation_checkpoint.mode
    if ac not in ("none", "full"):
        raise ValueError(f"activation_checkpoint.mode: the 2-simplicial spec supports 'none' and 'full', got {ac!r}")
    if ac == "full":
        for key, block in model.layers.named_children():
            model.layers.register_module(key, checkpoint_wrapper(block))
    tp = parallel_dims.get_optional_mesh("tp")
    cp = parallel_dims.get_optional_mesh("cp")
    if cp is not None:
        job_config.parallelism.context_parallel_load_balancer = None  # contiguous chunks (module doc)
    job_config.parallelism.disable_loss_parallel = True
    names = [n for n, on in (("dp_replicate", parallel_dims.dp_replicate_enabled), ("fsdp", parallel_dims.fsdp_enabled))
             if on]  # fmt: skip
    data = parallel_dims.get_mesh(names if len(names) > 1 else names[0]) if names else None
    training = job_config.training
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, training.mixed_precision_param),
                              reduce_dtype=getattr(torch, training.mixed_precision_reduce))  # fmt: skip
    reshard = job_config.parallelism.fsdp_reshard_after_forward != "never"
    decoder.apply(model, tp_mesh=tp, cp_mesh=cp, data_mesh=data, mp_policy=mp, reshard_after_forward=reshard)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            if data.device_type == "cpu":  # gloo has no pre-multiplied sum: sum, then scale
                module.set_force_sum_reduction_for_comms(True)
    return model
