"""What the attention modules (layer.py, sdpa.py) share: argument checks, the sequence layouts a
module accepts, initialisation and the q/k norm.

A module's input x is one of

    [B, N, dim]                 a batch of sequences (positions 0 .. N-1, or `positions`)
    [T, dim] with cu_seqlens    packed sequences (CONTRACT §6): positions restart at every sequence
    [N, dim]                    one unbatched sequence
    [B, Nq, dim] with a cache   the next Nq tokens of B sequences being generated (positions from
                                the cache's lengths)
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import backends
from ..ops import checks


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def head_sizes(dim, num_heads, num_kv_heads, head_dim):
    """Validated (num_heads, num_kv_heads, head_dim) with the defaults filled in."""
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    check_positive_int("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads = {num_heads} must be a multiple of num_kv_heads = {num_kv_heads}")
    if head_dim is None:
        if dim % num_heads != 0:
            raise ValueError(f"dim = {dim} must be divisible by num_heads = {num_heads} (or pass head_dim)")
        head_dim = dim // num_heads
    check_positive_int("head_dim", head_dim)
    return num_heads, num_kv_heads, head_dim


def check_dropout(dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def check_window_arg(name, w):
    """A window (int >= 1 or None), checked when the module is built, not at its first forward."""
    try:
        checks.check_window(name, w)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def check_backend_arg(backend):
    try:
        backends.check_name(backend)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def check_input(x, weight):
    """x as the layer's projections take it: a tensor of the layer's dtype (that of `weight`, one of
    its parameters), or under autocast any dtype autocast casts (float16, bfloat16, float32).
    Checked here, so the error names x instead of surfacing from nn.Linear."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == weight.dtype:
        return
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return
    name = str(weight.dtype).removeprefix("torch.")
    raise TypeError(
        f"x must have the layer's dtype {name} (under autocast: float16, bfloat16 or float32), "
        f"got {str(x.dtype).removeprefix('torch.')}"
    )


def packed_positions(cu_seqlens, total):
    """Positions [T] that restart at 0 at every sequence of cu_seqlens (on its device, no sync)."""
    rows = torch.arange(total, device=cu_seqlens.device)
    cu = cu_seqlens.to(torch.int64)
    seq = torch.searchsorted(cu[1:], rows, right=True).clamp(max=max(cu.numel() - 2, 0))
    return rows - cu[seq]


def positions_for(x, dim, positions, cu_seqlens, cache):
    """The RoPE positions of x in its layout (module doc), checking x's shape and `positions`."""
    if cache is not None:
        if x.dim() != 3 or cu_seqlens is not None or positions is not None:
            raise ValueError(
                "with a cache, x must be the new tokens [B, Nq, dim] (no positions, no cu_seqlens: the cache "
                f"knows where each sequence is), got x of shape {tuple(x.shape)}"
            )
        return cache.positions(x.shape[1])
    if x.dim() not in (2, 3) or x.shape[-1] != dim:
        raise ValueError(
            f"x must be [B, N, dim] (or [T, dim]: packed with cu_seqlens, or one unbatched sequence) with "
            f"dim = {dim}, got shape {tuple(x.shape)}"
        )
    if cu_seqlens is not None:
        if x.dim() != 2:
            raise ValueError(f"with cu_seqlens, x must be packed [T, dim], got shape {tuple(x.shape)}")
        if positions is None:
            checks.check_cu_seqlens_tensor(cu_seqlens, x.device)
            return packed_positions(cu_seqlens, x.shape[0])
    N = x.shape[-2]
    if positions is None:
        return torch.arange(N, device=x.device)
    shapes = ((N,),) if x.dim() == 2 else ((N,), (x.shape[0], N))
    if not isinstance(positions, torch.Tensor) or positions.dtype.is_floating_point or positions.shape not in shapes:
        allowed = f"[N] = [{N}]" + ("" if x.dim() == 2 else f" or [B, N] = [{x.shape[0]}, {N}]")
        got = (
            f"{positions.dtype} with shape {list(positions.shape)}"
            if isinstance(positions, torch.Tensor)
            else positions
        )
        raise ValueError(f"positions must be an integer tensor of shape {allowed}, got {got}")
    return positions


def op_dtype(t):
    """Under autocast, the dtype autocast computes in; else t's. The custom ops are not on autocast's
    lists, so without this they would see a mix of bf16 (linear outputs) and fp32 (norm outputs)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def init_projections(in_projs, out_proj):
    """LeCun-normal (std = fan_in^-1/2) for the input projections and the output projection, zero biases.

    For unit-variance x, q, k1, k2 come out with unit variance, so the trilinear logits
    D^-1/2 sum_d q k1 k2 start with unit variance (neither uniform nor saturated), v1 * v2 too,
    and the output projection has unit gain from the concatenated heads.

    The input projections (q, k1, k2, v1, v2; or q, k, v) are drawn as one matrix, rows in that
    order, and copied into the separate layers: a seeded model draws the numbers it drew when they
    were one fused layer (the split lets tensor parallelism shard each by heads).
    """
    weight = in_projs[0].weight
    with torch.no_grad():
        fused = torch.empty(sum(p.out_features for p in in_projs), weight.shape[1], dtype=weight.dtype,
                            device=weight.device)  # fmt: skip
        nn.init.normal_(fused, std=weight.shape[1] ** -0.5)
        for lin, rows in zip(in_projs, fused.split([p.out_features for p in in_projs]), strict=True):
            lin.weight.copy_(rows)
        nn.init.normal_(out_proj.weight, std=out_proj.in_features**-0.5)
        for lin in (*in_projs, out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


def local_out_features(linear):
    """Output features of this process's share of `linear`'s weight (all of them unless tensor
    parallelism sharded it: a DTensor weight)."""
    weight = linear.weight
    return (weight.to_local() if hasattr(weight, "to_local") else weight).shape[0]


def split_fused_projection(names):
    """A load_state_dict pre-hook: a state dict saved when the input projections were one `in_proj`
    layer (rows: the projections `names`, in order) loads into the separate layers."""

    def hook(module, state_dict, prefix, *args):
        for suffix in ("weight", "bias"):
            fused = state_dict.pop(f"{prefix}in_proj.{suffix}", None)
            if fused is not None:
                sizes = [getattr(module, name).out_features for name in names]
                for name, rows in zip(names, fused.split(sizes), strict=True):
                    state_dict[f"{prefix}{name}.{suffix}"] = rows

    return hook


class QKNorm(nn.RMSNorm):
    """RMSNorm computed in at least float32 (bf16 activations under autocast would meet an fp32
    gain; float64 models keep float64)."""

    def forward(self, x):
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = None if self.weight is None else self.weight.to(dtype)
        return F.rms_norm(x.to(dtype), self.normalized_shape, weight, self.eps)


def qk_norm(enabled, width, eps):
    return QKNorm(width, eps=eps) if enabled else nn.Identity()
