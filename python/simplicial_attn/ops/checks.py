"""Input rules of CONTRACT §4, §6, §7 and §8, each checked once per call, in one of two places.

    types    what an op's schema needs to carry an argument at all (a Tensor, an int or None, a
             bool, a float or None, a str): the public functions check them (check_*_types), so
             a wrong type is a TypeError naming the argument, not the dispatcher's schema error
    values   everything else (dtypes, devices, ranks, shapes, window sizes, scale, logit form,
             packing, caches): the torch.library ops check them (library.py), for the public
             functions and for direct torch.ops callers alike

Each error names the argument, what was expected and what was given; type problems raise
TypeError, value problems ValueError. Backend names, and which backend can serve a dtype or
device, are the registry's business (backends/__init__.py). Rules that read tensor values
(cu_seqlens, cache_seqlens) cost a device-to-host copy on a GPU; they are skipped while a CUDA
graph is being captured, where no copy is possible.
"""

import math
import numbers

import torch

from .. import backends
from ..problem import LOGITS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
ATTENTION_INPUTS = ("q", "k1", "k2", "v1", "v2")


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


# ---- types (the public functions) -------------------------------------------------------------


def check_tensor_type(name, t, optional=False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        kind = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{name} must be {kind}, got {type(t).__name__}")


def check_window_type(name, w):
    if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Integral)):
        raise TypeError(f"{name} must be an int >= 1 or None, got {type(w).__name__} {w!r}")


def check_scale_type(scale):
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_logits_type(logits):
    if not isinstance(logits, str):
        raise TypeError(f"logits must be a str, one of {', '.join(LOGITS)}; got {type(logits).__name__}")


def check_backend_type(backend):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {', '.join(backends.NAMES)}; got {type(backend).__name__}")


def check_attention_types(tensors, w1, w2, causal, scale, logits, backend, names=ATTENTION_INPUTS):
    """The types of an attention call's arguments (the tensors named `names`)."""
    for name, t in zip(names, tensors, strict=True):
        check_tensor_type(name, t)
    check_window_type("w1", w1)
    check_window_type("w2", w2)
    check_flag("causal", causal)
    check_scale_type(scale)
    check_logits_type(logits)
    check_backend_type(backend)


def check_max_seqlen_type(max_seqlen):
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral)):
        raise TypeError(f"max_seqlen must be an int >= 0 or None, got {type(max_seqlen).__name__} {max_seqlen!r}")


def op_window(w):
    """A window as the ops' schemas carry it (`int?`): numpy and other integers become int."""
    return None if w is None else int(w)


def op_scale(scale):
    return None if scale is None else float(scale)


# ---- values (the ops) -------------------------------------------------------------------------


def check_window_size(name, w):
    if w is not None and w < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {w}")


def check_window(name, w):
    """A window argument of a module or cache (int >= 1 or None), type and size at once."""
    check_window_type(name, w)
    check_window_size(name, w)


def check_scale(scale):
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_logits(logits, head_dim):
    """logits is "trilinear" or "determinant"; the determinant needs head_dim % 3 == 0 (CONTRACT §8)."""
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {', '.join(LOGITS)}; got {logits!r}")
    if logits == "determinant" and head_dim % 3 != 0:
        raise ValueError(
            f"logits='determinant' needs a head dim divisible by 3 (chunks of 3 channels): got D = {head_dim}"
        )


def check_call(tensors, w1, w2, causal, scale, logits, packed=False):
    """Every rule of an attention call, types and values, for callers that split or reshape the
    tensors before any op sees them (context parallelism): returns (Hq, Hkv, D)."""
    check_attention_types(tensors, w1, w2, causal, scale, logits, "auto")
    sizes = check_tensors(*tensors, packed=packed)
    check_window_size("w1", w1)
    check_window_size("w2", w2)
    check_scale(scale)
    check_logits(logits, sizes[2])
    return sizes


_LAYOUTS = {
    False: ("[B, N, Hq, D]", "[B, N, Hkv, D]", ((0, "B"), (1, "N"), (3, "D")), 4),
    True: ("[T, Hq, D]", "[T, Hkv, D]", ((0, "T"), (2, "D")), 3),
}


def check_tensors(q, k1, k2, v1, v2, packed=False):
    """Dtypes, devices, ranks and shapes of the five input tensors, batched ([B, N, H, D]) or
    packed ([T, H, D], CONTRACT §6); returns (Hq, Hkv, D)."""
    named = dict(zip(ATTENTION_INPUTS, (q, k1, k2, v1, v2), strict=True))
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"q must have dtype float16, bfloat16 or float32 (float64 on the cpu and reference backends), "
            f"got {_dtype_name(q.dtype)}"
        )
    for name, t in named.items():
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {_dtype_name(q.dtype)}, got {_dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    q_layout, kv_layout, same_as_q, rank = _LAYOUTS[packed]
    for name, t in named.items():
        if t.dim() != rank:
            layout = q_layout if name == "q" else kv_layout
            raise ValueError(f"{name} must have rank {rank} {layout}, got rank {t.dim()} with shape {tuple(t.shape)}")
    for name in ("k2", "v1", "v2"):
        if named[name].shape != k1.shape:
            raise ValueError(
                f"{name} must have k1's shape {tuple(k1.shape)} {kv_layout}, got {tuple(named[name].shape)}"
            )
    for axis, label in same_as_q:
        if k1.shape[axis] != q.shape[axis]:
            raise ValueError(
                f"k1, k2, v1, v2 must have q's {label} = {q.shape[axis]} (dim {axis}), got {k1.shape[axis]} "
                f"(k1 shape {tuple(k1.shape)}, q shape {tuple(q.shape)})"
            )
    Hq, Hkv, D = q.shape[-2], k1.shape[-2], q.shape[-1]
    if Hq < 1 or Hkv < 1:
        raise ValueError(f"q and k1 must have at least one head, got Hq = {Hq}, Hkv = {Hkv}")
    if Hq % Hkv != 0:
        raise ValueError(f"q's heads Hq = {Hq} must be a multiple of k1's heads Hkv = {Hkv}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D (q.shape[{rank - 1}]) must be in 1..{MAX_HEAD_DIM}, got {D}")
    return Hq, Hkv, D


def values_readable(t):
    """False while a CUDA graph is being captured: a device-to-host copy is impossible there."""
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_cu_seqlens_tensor(cu_seqlens, device):
    """CONTRACT §6, what needs no values: a 1-D int32 / int64 tensor [S + 1] on q's device."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor of int32 or int64, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must have dtype int32 or int64, got {_dtype_name(cu_seqlens.dtype)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D [S + 1] with S >= 0, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens must be on q's device {device}, got {cu_seqlens.device}")


def check_max_seqlen(max_seqlen):
    if max_seqlen is not None and max_seqlen < 0:
        raise ValueError(f"max_seqlen must be an int >= 0 or None, got {max_seqlen}")


def check_packing(cu_seqlens, max_seqlen, total):
    """CONTRACT §6, the values (check_cu_seqlens_tensor and check_max_seqlen checked the rest):
    0 = cu[0] <= ... <= cu[S] = T, and max_seqlen >= every length. Returns (cu_seqlens as int32
    contiguous, the longest sequence): its true length when the values can be read (one
    device-to-host copy on a GPU), else min(max_seqlen, T) while a CUDA graph is captured.
    `max_seqlen` is a hint: the work never depends on it, only on the sequences (CONTRACT §6)."""
    cu = cu_seqlens.to(torch.int32).contiguous()
    if not values_readable(cu):
        return cu, total if max_seqlen is None else min(max_seqlen, total)
    values = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    if values[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {values[0]}")
    if any(n < 0 for n in lengths):
        s = next(i for i, n in enumerate(lengths) if n < 0)
        raise ValueError(
            f"cu_seqlens must not decrease, got cu_seqlens[{s}] = {values[s]} > [{s + 1}] = {values[s + 1]}"
        )
    if values[-1] != total:
        raise ValueError(f"cu_seqlens must end at T = q.shape[0] = {total}, got cu_seqlens[-1] = {values[-1]}")
    longest = max(lengths, default=0)
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(f"max_seqlen must be >= every sequence length ({longest}), got {max_seqlen}")
    return cu, longest


CACHE_TENSORS = ("q", "k1_cache", "k2_cache", "v1_cache", "v2_cache", "cache_seqlens")


def check_cache_types(tensors, new, w1, w2, scale, logits, backend):
    """The types of a decoding call: `tensors` = (q, k1_cache, k2_cache, v1_cache, v2_cache,
    cache_seqlens), `new` = (k1, k2, v1, v2) tensors or None."""
    for name, t in zip(CACHE_TENSORS, tensors, strict=True):
        check_tensor_type(name, t)
    for name, t in zip(("k1", "k2", "v1", "v2"), new, strict=True):
        check_tensor_type(name, t, optional=True)
    check_window_type("w1", w1)
    check_window_type("w2", w2)
    check_scale_type(scale)
    check_logits_type(logits)
    check_backend_type(backend)


def check_cache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, new, w1, w2):
    """CONTRACT §7, shapes only: q [B, Nq, Hq, D]; k1/v1 caches [B, C1, Hkv, D]; k2/v2 caches
    [B, C2, Hkv, D]; cache_seqlens int32 [B]; `new` = (k1, k2, v1, v2), all None or all
    [B, Nq, Hkv, D]; windows >= 1 or None (check_cache_lengths: whether they fit the caches)."""
    caches = {"k1_cache": k1_cache, "k2_cache": k2_cache, "v1_cache": v1_cache, "v2_cache": v2_cache}
    named = {"q": q, **caches}
    for name, t in named.items():
        if t.dim() != 4:
            layout = "[B, Nq, Hq, D]" if name == "q" else f"[B, C{name[1]}, Hkv, D]"
            raise ValueError(f"{name} must have rank 4 {layout}, got rank {t.dim()} with shape {tuple(t.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q must have dtype float16, bfloat16, float32 or float64, got {_dtype_name(q.dtype)}")
    for name, t in caches.items():
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {_dtype_name(q.dtype)}, got {_dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    B, Nq, Hq, D = q.shape
    Hkv = k1_cache.shape[2]
    for name, t in caches.items():
        ring = k1_cache.shape[1] if name[1] == "1" else k2_cache.shape[1]
        if tuple(t.shape) != (B, ring, Hkv, D):
            raise ValueError(
                f"{name} must have shape [B, C{name[1]}, Hkv, D] = {(B, ring, Hkv, D)} (B, D from q; "
                f"C{name[1]}, Hkv from k{name[1]}_cache), got {tuple(t.shape)}"
            )
    if Hq < 1 or Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"q's heads Hq = {Hq} must be a positive multiple of the caches' heads Hkv = {Hkv}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D (q.shape[3]) must be in 1..{MAX_HEAD_DIM}, got {D}")
    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens must have dtype int32, got {_dtype_name(cache_seqlens.dtype)}")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens must have shape [B] = [{B}], got {list(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens must be on q's device {q.device}, got {cache_seqlens.device}")
    given = [t is not None for t in new]
    if any(given) and not all(given):
        raise ValueError("k1, k2, v1, v2 must be given together (all four new tokens' keys and values) or not at all")
    for name, t in zip(("k1", "k2", "v1", "v2"), new, strict=True):
        if t is None:
            continue
        if t.device != q.device or t.dtype != q.dtype:
            raise ValueError(f"{name} must be on q's device and dtype ({q.device}, {_dtype_name(q.dtype)})")
        if tuple(t.shape) != (B, Nq, Hkv, D):
            raise ValueError(f"{name} must have shape [B, Nq, Hkv, D] = {(B, Nq, Hkv, D)}, got {tuple(t.shape)}")
    check_window_size("w1", w1)
    check_window_size("w2", w2)
    for idx, ring in ((1, k1_cache.shape[1]), (2, k2_cache.shape[1])):
        if ring < 1:
            raise ValueError(f"k{idx}_cache must have at least one slot, got C{idx} = {ring}")


def check_cache_memory(caches, writing):
    """CONTRACT §7: the call writes the new tokens into the caches in place, so a cache that is
    expanded (a zero stride on a dim of size > 1: one slot aliases others) or that shares its
    storage with another cache would silently lose tokens. `caches` maps names to the four caches;
    `writing` says whether new tokens are given. Reads storage addresses: not for fake tensors."""
    if writing:
        for name, t in caches.items():
            dims = [d for d, (n, st) in enumerate(zip(t.shape, t.stride(), strict=True)) if st == 0 and n > 1]
            if dims:
                raise ValueError(
                    f"{name} is expanded (stride 0 on dim {dims[0]} of size {t.shape[dims[0]]}): the new tokens "
                    f"written into it would land in every slot that shares the memory; pass a cache with memory "
                    f"of its own (e.g. {name}.clone())"
                )
    seen = {}
    for name, t in caches.items():
        if t.numel() == 0:
            continue
        other = seen.setdefault(t.untyped_storage().data_ptr(), name)
        if other != name:
            raise ValueError(
                f"{name} shares its storage with {other} (the same tensor, or views of one tensor): each of "
                "k1_cache, k2_cache, v1_cache, v2_cache needs storage of its own"
            )


def check_cache_lengths(cache_seqlens, nq, windows, rings):
    """A cache serves a call when, per window w and ring size C (CONTRACT §7), either C >= w + Nq - 1
    (a ring: no query reads a slot the new tokens overwrote) or no position ever wrapped
    (max(cache_seqlens) + Nq <= C, the linear cache); w = None needs the latter. Also
    cache_seqlens >= 0 (checked where reading it is free: CPU tensors, or when the values are
    read anyway). On a GPU, cache_seqlens is read only when the shapes alone do not decide."""
    need_values = any(w is None or ring < w + nq - 1 for w, ring in zip(windows, rings, strict=True))
    if not values_readable(cache_seqlens):
        if need_values:
            raise ValueError(
                "while a CUDA graph is captured the caches must be rings of C >= w + Nq - 1 slots for finite windows "
                f"(got windows {windows}, cache sizes {rings}, Nq = {nq})"
            )
        return
    if not need_values and cache_seqlens.is_cuda:
        return  # a ring decides by shape; no device-to-host read per decode step on a GPU
    lengths = cache_seqlens.tolist()
    if any(n < 0 for n in lengths):
        raise ValueError(f"cache_seqlens must be >= 0, got {lengths}")
    if not need_values:
        return
    longest = max(lengths, default=0)
    for idx, (w, ring) in enumerate(zip(windows, rings, strict=True), start=1):
        if (w is None or ring < w + nq - 1) and longest + nq > ring:
            ring_rule = (
                "a None window needs a linear cache" if w is None else f"a ring needs w{idx} + Nq - 1 = {w + nq - 1}"
            )
            raise ValueError(
                f"k{idx}_cache is too small: C{idx} = {ring} slots; {ring_rule}, and a linear cache needs "
                f"max(cache_seqlens) + Nq = {longest} + {nq} = {longest + nq}"
            )


def check_no_forward_ad(*tensors):
    """Forward-mode AD (torch.func.jvp / jacfwd, forward_ad.make_dual) is not implemented: say so
    instead of returning a zero tangent, as a custom op without a jvp rule otherwise would."""
    if torch.compiler.is_compiling():
        return
    import torch.autograd.forward_ad as fwAD

    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    dual = fwAD._current_level >= 0 and any(fwAD.unpack_dual(t).tangent is not None for t in tensors)
    if dual or _inside_jvp():
        raise NotImplementedError(
            "simplicial_attn has no forward-mode AD (torch.func.jvp, jacfwd, forward_ad.make_dual): its ops define "
            "reverse-mode gradients only (backward, torch.autograd.grad)"
        )


def _inside_jvp():
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
