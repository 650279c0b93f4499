"""Input rules of CONTRACT §4, §6, §7 and §8. Each error names the argument, what was expected and
what was given.

Type problems raise TypeError, value problems ValueError. Which backend can serve a dtype
or device is the registry's business (backends.py), not this module's. Rules that read tensor
values (cu_seqlens, cache_seqlens) cost a device-to-host copy on a GPU; they are skipped while
a CUDA graph is being captured, where no copy is possible.
"""

import math
import numbers

import torch

from .problem import LOGITS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
BACKEND_NAMES = ("auto", "cuda", "triton", "cpu", "reference")


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def check_window(name, w):
    if w is None:
        return
    if isinstance(w, bool) or not isinstance(w, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1 or None, got {type(w).__name__} {w!r}")
    if w < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {w}")


def check_scale(scale):
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_call(tensors, w1, w2, causal, scale, logits, packed=False, return_lse=False):
    """The rules every public attention call shares: the tensors (q, k1, k2, v1, v2: batched or
    packed), windows, window mode, scale, logit form, the return_lse flag, and no forward-mode AD."""
    check_tensors(*tensors, packed=packed)
    check_window("w1", w1)
    check_window("w2", w2)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    check_scale(scale)
    check_logits(logits, tensors[0].shape[-1])
    check_no_forward_ad(*tensors)


def check_backend_name(backend):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {', '.join(BACKEND_NAMES)}; got {type(backend).__name__}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {backend!r}")


def check_concrete_backend(backend):
    """The ops take the backend the public functions resolved: a name, not "auto"."""
    check_backend_name(backend)
    if backend == "auto":
        raise ValueError("backend must be a concrete backend for the op (cuda, triton, cpu or reference), got 'auto'")


def check_logits(logits, head_dim):
    """logits is "trilinear" or "determinant"; the determinant needs head_dim % 3 == 0 (CONTRACT §8)."""
    if not isinstance(logits, str):
        raise TypeError(f"logits must be a str, one of {', '.join(LOGITS)}; got {type(logits).__name__}")
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {', '.join(LOGITS)}; got {logits!r}")
    if logits == "determinant" and head_dim % 3 != 0:
        raise ValueError(
            f"logits='determinant' needs a head dim divisible by 3 (chunks of 3 channels): got D = {head_dim}"
        )


_LAYOUTS = {
    False: ("[B, N, Hq, D]", "[B, N, Hkv, D]", ((0, "B"), (1, "N"), (3, "D")), 4),
    True: ("[T, Hq, D]", "[T, Hkv, D]", ((0, "T"), (2, "D")), 3),
}


def check_tensors(q, k1, k2, v1, v2, packed=False):
    """Types, dtypes, devices, ranks and shapes of the five inputs, batched ([B, N, H, D]) or
    packed ([T, H, D], CONTRACT §6); returns (Hq, Hkv, D)."""
    named = {"q": q, "k1": k1, "k2": k2, "v1": v1, "v2": v2}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
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
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral):
        raise TypeError(f"max_seqlen must be an int >= 0, got {type(max_seqlen).__name__} {max_seqlen!r}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be an int >= 0, got {max_seqlen}")


def check_cu_seqlens(cu_seqlens, total, device, max_seqlen):
    """CONTRACT §6: 1-D integer [S + 1] on q's device, 0 = cu[0] <= ... <= cu[S] = T, and max_seqlen
    an int >= every length. Returns cu_seqlens as int32 contiguous. The values are read (one
    device-to-host copy on a GPU) except while a CUDA graph is captured."""
    check_cu_seqlens_tensor(cu_seqlens, device)
    check_max_seqlen(max_seqlen)
    cu = cu_seqlens.to(torch.int32).contiguous()
    if not values_readable(cu):
        return cu
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
    if max_seqlen < longest:
        raise ValueError(f"max_seqlen must be >= every sequence length ({longest}), got {max_seqlen}")
    return cu


def check_band(name, band):
    """A reach of a kernel band (problem.Band): an int >= 0."""
    if isinstance(band, bool) or not isinstance(band, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0 (a band's reach), got {type(band).__name__} {band!r}")
    if band < 0:
        raise ValueError(f"{name} must be an int >= 0 (a band's reach), got {band}")


def check_op_args(q, cu_seqlens, max_seqlen, bands, scale, logits, backend):
    """The non-tensor arguments of a direct op call (_ops.py): `bands` = (left1, right1, left2,
    right2), the reaches of the kernel bands. Returns cu_seqlens as the kernels take it (int32,
    contiguous) or None."""
    for name, reach in zip(("left1", "right1", "left2", "right2"), bands, strict=True):
        check_band(name, reach)
    check_scale(scale)
    if scale is None:
        raise TypeError("scale must be a float (the op takes the resolved scale), got None")
    check_logits(logits, q.shape[-1])
    check_concrete_backend(backend)
    if cu_seqlens is None:
        return None
    if q.shape[0] != 1:
        raise ValueError(f"packed inputs reach the op as [1, T, H, D]; got q with batch {q.shape[0]}")
    return check_cu_seqlens(cu_seqlens, q.shape[1], q.device, max_seqlen)


def check_cache(q, k1_cache, k2_cache, v1_cache, v2_cache, cache_seqlens, new, w1, w2):
    """CONTRACT §7, shapes only: q [B, Nq, Hq, D]; k1/v1 caches [B, C1, Hkv, D]; k2/v2 caches
    [B, C2, Hkv, D]; cache_seqlens int32 [B]; `new` = (k1, k2, v1, v2), all None or all
    [B, Nq, Hkv, D]; windows (int or None) that fit the caches (see check_cache_windows)."""
    caches = {"k1_cache": k1_cache, "k2_cache": k2_cache, "v1_cache": v1_cache, "v2_cache": v2_cache}
    named = {"q": q, **caches}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
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
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"cache_seqlens must be an int32 torch.Tensor [B], got {type(cache_seqlens).__name__}")
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
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device != q.device or t.dtype != q.dtype:
            raise ValueError(f"{name} must be on q's device and dtype ({q.device}, {_dtype_name(q.dtype)})")
        if tuple(t.shape) != (B, Nq, Hkv, D):
            raise ValueError(f"{name} must have shape [B, Nq, Hkv, D] = {(B, Nq, Hkv, D)}, got {tuple(t.shape)}")
    check_window("w1", w1)
    check_window("w2", w2)
    for idx, ring in ((1, k1_cache.shape[1]), (2, k2_cache.shape[1])):
        if ring < 1:
            raise ValueError(f"k{idx}_cache must have at least one slot, got C{idx} = {ring}")


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
